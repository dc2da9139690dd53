#!/usr/bin/env python3
"""cx-sentinel's rules as a quixstreams application: the peer of the end-to-end benchmark.

`e2e_bench --peer quix` (`examples/e2e_bench/peer.rs`) runs this (through `scripts/peer/py-env.sh`)
over the same input topic as cx-sentinel, with a fresh consumer group and alert topic, and reports
its rate and CPU next to cx-sentinel's. It can also be run by hand:

    PY=$(scripts/peer/py-env.sh)
    $PY scripts/peer/quix_sentinel.py --brokers 127.0.0.1:19092 --topic IN --alert-topic OUT \
        --group G --events 200000 --fetch-wait-ms 20

It stops once it has processed `--events` records and prints one JSON line on stdout (logs go to
stderr): events, wall seconds, process CPU seconds (user + sys of the whole process, every thread:
`resource.getrusage(RUSAGE_SELF)`), events/s and CPU µs/event, all measured from the first
processed record to the last, as the benchmark's baseline is; alerts (by rule), and the whole run
(start-up, group join and the final commit) for reference.

Input: Confluent-framed Avro touchpoints (magic byte, 4-byte schema id, datum; the id is not
checked) decoded with fastavro's `schemaless_reader` and the parsed `schemas/touchpoint.avsc`
(the `timestamp-millis` logical type is dropped from the parsed schema so `occurred_at` stays an
int, as cx-sentinel keeps it). Output: alerts as JSON with the `RecoveryAlert` fields, keyed by
customer id (cx-sentinel's `--output-format json`), so cx-sentinel's own decoder reads them.

State: one value per customer (the message key) in quixstreams' State, i.e. its RocksDB store,
backed by its changelog topic (compacted, one partition per input partition: the equivalent of
cx-sentinel's `state.changelog`). The thresholds come from the same `config/default.toml`
(`--config`); only the keys named below are read. Checkpoints every `--commit-interval` seconds
(default 0.1 s, cx-sentinel's `processing.commit_interval`; quixstreams' own default is 5 s).

With tansu 0.6 (the benchmark's broker), found by running this:
- quixstreams creates its changelog topic itself, through the admin API (CreateTopics with
  `cleanup.policy=compact`, then Metadata and DescribeConfigs), and that works on tansu. The name
  is `changelog__<group>--<input topic>--default`, as many partitions as the input.
- but it derives that topic's config from the input topic's `retention.ms`, read with
  DescribeConfigs, and tansu lists only the configs a topic was created with: for a topic created
  without any (as the benchmark creates its input) `register_store` fails with
  `KeyError: 'retention.ms'`. `fix_retention` fills in Kafka's "no limit" (-1) before that.
- tansu does not auto-create topics: the input and alert topics must exist.
- tansu sleeps `fetch.wait.max.ms` before answering every fetch: pass `--fetch-wait-ms` (the
  benchmark passes its own value). `fetch.queue.backoff.ms` is 10 ms, as for cx-sentinel's consumer.

What this port implements, following `src/engine/mod.rs` (`Engine::apply`, `evaluate`, `fire_due`)
and `src/engine/rules.rs` line by line:

- polarity: negative = outcome in `rules.negative.outcomes` or sentiment <= `rules.negative
  .sentiment`; positive = outcome in `rules.positive.outcomes` or sentiment >= the positive
  threshold; negative wins.
- stakes: the first matching glob of `rules.stakes.patterns` (`*` = any run, same matcher as
  `config::glob_match`), else the default; ENGAGEMENT x `engagement_factor`; tier multiplier from
  `rules.tiers` (the customer keeps the last tier seen).
- the decayed experience score (half-life `engine.score_half_life`), as of the newest touchpoint.
- de-duplication over the last `engine.recent_touchpoints` event ids, and that ring of recent
  touchpoints (sent with every alert, sentiment in thousandths).
- journey episodes (at most `engine.max_journeys`, window = the longer of the two rule windows,
  restarted by a positive): INBOUND INTERACTION contacts and distinct INBOUND channels.
- the four opening rules, in the same order and with the same severities: critical_negative
  (negative with stakes >= `min_stakes`: HIGH, CRITICAL at tier multiplier >=
  `critical_tier_multiplier`), experience_decline (score <= threshold: MEDIUM), high_effort and
  channel_hopping (MEDIUM); severity = the highest of the rules that match.
- the case lifecycle: at most one open case per (customer, journey), never a second alert for one
  problem; a further negative escalates once (repeat_negative, one step up); a positive recovers
  it (RECOVERED, time_to_recover_ms); opening one more than `engine.max_open_cases` expires the
  oldest (case_limit).
- SLA escalation (sla_breach) and case expiry (case_expired), and resetting a customer idle past
  `engine.customer_ttl`, **only when that customer's next touchpoint arrives** (cx-sentinel's
  `fire_due` in `apply` does the same; the per-customer state evolves identically).
- alerts: the same fields, ids (64-bit FNV-1a of customer, journey, opening time, trigger event id,
  so the same input gives the same `alert_id`s), priority, reason templates (durations formatted
  like humantime), score, recent touchpoints, attributes minus `privacy.sensitive_attributes`.

What it leaves out (so what cx-sentinel does and this does not pay for):

- event-time timers: cx-sentinel also fires SLA and expiry timers when the partition's watermark
  passes them, so it emits sla_breach / case_expired alerts for customers who never come back;
  here those are emitted only on the customer's next touchpoint, or never (fewer timer alerts).
- the watermark, reorder buffer and late records (cx-sentinel runs the benchmark with lateness 0s
  on a load in event-time order per partition, so nothing is reordered or late there either).
- the hourly sweep of idle customers and the `state.max_customers` cap (a customer idle past the
  TTL is reset on its next touchpoint instead).
- validation and the dead-letter topic (a record that does not decode stops the run), schema-id
  checks and registry lookups, the interning caps, metrics, `/health` and `/customers`.
- cx-sentinel's delivery discipline (an offset committed only once that record's alerts and state
  are acknowledged, changelog written after its alerts): quixstreams' own at-least-once checkpoints
  are used instead (every `--commit-interval` seconds: flush the producer, then commit offsets).
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

CHANNELS = ["WEB", "MOBILE_APP", "EMAIL", "SMS", "VOICE", "CHAT", "STORE", "SOCIAL", "OTHER"]
CHANNEL_BIT = {c: 1 << i for i, c in enumerate(CHANNELS)}
SEVERITIES = ["LOW", "MEDIUM", "HIGH", "CRITICAL"]
LOW, MEDIUM, HIGH, CRITICAL = range(4)
NEGATIVE, NEUTRAL, POSITIVE = -1, 0, 1
LN2 = math.log(2.0)

# ------------------------------------------------------------------------------------------------
# Configuration: the keys of config/default.toml this port uses.

_UNITS = {
    "ms": 1,
    "s": 1000,
    "sec": 1000,
    "m": 60_000,
    "min": 60_000,
    "h": 3_600_000,
    "d": 86_400_000,
    "w": 7 * 86_400_000,
}


def parse_duration_ms(text: str) -> int:
    """'10m', '4h', '7d', '1h 30m' -> milliseconds (the subset of humantime the config uses)."""
    total, num, unit = 0, "", ""
    for ch in text.strip() + " ":
        if ch.isdigit():
            if unit:
                total += int(num) * _UNITS[unit]
                num, unit = "", ""
            num += ch
        elif ch.isalpha():
            unit += ch
        elif num or unit:
            if not num or unit not in _UNITS:
                raise ValueError(f"bad duration {text!r}")
            total += int(num) * _UNITS[unit]
            num, unit = "", ""
    return total


def format_duration_ms(ms: int) -> str:
    """humantime::format_duration of a whole number of milliseconds."""
    secs, millis = divmod(max(ms, 0), 1000)
    if secs == 0 and millis == 0:
        return "0s"
    years, rem = divmod(secs, 31_557_600)
    months, rem = divmod(rem, 2_630_016)
    days, rem = divmod(rem, 86_400)
    hours, rem = divmod(rem, 3600)
    minutes, seconds = divmod(rem, 60)
    parts = []
    for value, one, many in (
        (years, "year", "years"),
        (months, "month", "months"),
        (days, "day", "days"),
    ):
        if value:
            parts.append(f"{value}{one if value == 1 else many}")
    for value, unit in ((hours, "h"), (minutes, "m"), (seconds, "s"), (millis, "ms")):
        if value:
            parts.append(f"{value}{unit}")
    return " ".join(parts)


def glob_match(pattern: str, text: str) -> bool:
    """config::glob_match: `*` matches any run of characters, nothing else is special."""
    parts = pattern.split("*")
    first = parts[0]
    if not text.startswith(first):
        return False
    rest = text[len(first) :]
    pieces = parts[1:]
    if not pieces:
        return rest == ""
    *middle, last = pieces
    for piece in middle:
        at = rest.find(piece)
        if at < 0:
            return False
        rest = rest[at + len(piece) :]
    return len(rest) >= len(last) and rest.endswith(last)


class Rules:
    def __init__(self, path: Path):
        with open(path, "rb") as f:
            c = tomllib.load(f)
        e, r = c.get("engine", {}), c.get("rules", {})
        dur = lambda section, key, default: parse_duration_ms(section.get(key, default))  # noqa: E731
        self.half_life_ms = float(dur(e, "score_half_life", "7d"))
        self.sla_ms = dur(e, "case_sla", "4h")
        self.case_sla_text = e.get("case_sla", "4h")
        self.expiry_ms = dur(e, "case_expiry", "30d")
        self.ttl_ms = dur(e, "customer_ttl", "30d")
        self.recent = int(e.get("recent_touchpoints", 10))
        self.max_journeys = int(e.get("max_journeys", 4))
        self.max_open_cases = int(e.get("max_open_cases", 4))
        neg, pos = r.get("negative", {}), r.get("positive", {})
        self.negative_outcomes = set(neg.get("outcomes", ["FAILURE", "ABANDONED", "ESCALATED"]))
        self.negative_sentiment = float(neg.get("sentiment", -0.3))
        self.positive_outcomes = set(pos.get("outcomes", ["SUCCESS"]))
        self.positive_sentiment = float(pos.get("sentiment", 0.3))
        st = r.get("stakes", {})
        self.default_weight = float(st.get("default_weight", 1.0))
        self.default_channel = st.get("default_channel", "VOICE")
        self.engagement_factor = float(st.get("engagement_factor", 0.25))
        self.patterns = [
            (p["pattern"], float(p.get("weight", self.default_weight)), p.get("channel", self.default_channel))
            for p in st.get("patterns", [])
        ]
        self.tiers = {k: float(v) for k, v in r.get("tiers", {"vip": 2.0}).items()}
        cn = r.get("critical_negative", {})
        self.critical_enabled = cn.get("enabled", True)
        self.critical_min_stakes = float(cn.get("min_stakes", 3.0))
        self.critical_tier = float(cn.get("critical_tier_multiplier", 2.0))
        ed = r.get("experience_decline", {})
        self.decline_enabled = ed.get("enabled", True)
        self.decline_threshold = float(ed.get("threshold", -6.0))
        he = r.get("high_effort", {})
        self.effort_enabled = he.get("enabled", True)
        self.effort_min = int(he.get("min_contacts", 4))
        self.effort_window_ms = dur(he, "window", "24h")
        ch = r.get("channel_hopping", {})
        self.hopping_enabled = ch.get("enabled", True)
        self.hopping_min = int(ch.get("min_channels", 3))
        self.hopping_window_ms = dur(ch, "window", "24h")
        self.episode_window_ms = max(self.effort_window_ms, self.hopping_window_ms)
        self.sensitive = list(c.get("privacy", {}).get("sensitive_attributes", ["health.*", "ssn", "card_number"]))
        self._stakes: dict[str, tuple[float, str]] = {}

    def polarity(self, outcome: str, sentiment) -> int:
        if outcome in self.negative_outcomes or (sentiment is not None and sentiment <= self.negative_sentiment):
            return NEGATIVE
        if outcome in self.positive_outcomes or (sentiment is not None and sentiment >= self.positive_sentiment):
            return POSITIVE
        return NEUTRAL

    def stake_of_type(self, touchpoint: str) -> tuple[float, str]:
        """First matching pattern, else the default (cached per type, like cx-sentinel's interner)."""
        s = self._stakes.get(touchpoint)
        if s is None:
            s = next(
                ((w, ch) for p, w, ch in self.patterns if glob_match(p, touchpoint)),
                (self.default_weight, self.default_channel),
            )
            self._stakes[touchpoint] = s
        return s

    def shareable(self, attributes: dict) -> dict:
        return {k: v for k, v in sorted(attributes.items()) if not any(glob_match(p, k) for p in self.sensitive)}

    def decay(self, score: float, frm, to: int) -> float:
        if frm is None or to <= frm or score == 0.0:
            return score
        return score * math.exp(-(to - frm) / self.half_life_ms * LN2)


def fnv64(*parts: bytes) -> int:
    """state::fnv64: FNV-1a over the parts, a 0xff separator after each."""
    h = 0xCBF29CE484222325
    for part in parts:
        for b in part:
            h = ((h ^ b) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
        h = ((h ^ 0xFF) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def round_to(x: float, places: int) -> float:
    f = 10.0**places
    v = x * f
    r = math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)  # Rust's f64::round
    r /= f
    return 0.0 if r == 0 else r


def thousandths(s):
    if s is None:
        return None
    v = max(-1.0, min(1.0, s)) * 1000.0
    return (math.floor(v + 0.5) if v >= 0 else -math.floor(-v + 0.5)) / 1000.0


# ------------------------------------------------------------------------------------------------
# The engine. Per-customer state (a JSON value in quixstreams' State):
#   {"tier": str|None, "score": float,
#    "r":  [[event_id, occurred_at, channel, touchpoint, outcome, sentiment], ...]  oldest first,
#    "ep": [[journey, first, span, contacts, channel_bits], ...],
#    "c":  [[journey, case_hash, opened_at, last_touch, last_event_id, rule, severity, channel,
#            escalated, weight], ...]}
# The score is as of the newest touchpoint (the last entry of "r"), as in cx-sentinel.

J, HASH, OPENED, LAST_TOUCH, LAST_EVENT, RULE, SEV, CHAN, ESC, WEIGHT = range(10)


def new_state() -> dict:
    return {"tier": None, "score": 0.0, "r": [], "ep": [], "c": []}


class Engine:
    def __init__(self, rules: Rules):
        self.rules = rules
        self.alerts_by_rule: dict[str, int] = {}

    def _alert(self, customer, st, case, status, rule, severity, event_time, trigger, reason, now, ttr=None, attrs=None):
        r = self.rules
        last = st["r"][-1][1] if st["r"] else None
        score = r.decay(st["score"], last, event_time)
        priority = (severity + 1) * 10 + case[WEIGHT] + min(max(-score, 0.0), 50.0) / 10.0
        case_id = f"{case[HASH]:016x}"
        self.alerts_by_rule[rule] = self.alerts_by_rule.get(rule, 0) + 1
        return {
            "alert_id": f"{case_id}-{status.lower()}",
            "case_id": case_id,
            "status": status,
            "customer_id": customer,
            "journey": case[J],
            "rule": rule,
            "severity": SEVERITIES[severity],
            "priority": round_to(priority, 3),
            "reason": reason,
            "recommended_channel": case[CHAN],
            "trigger_event_id": trigger,
            "event_time": event_time,
            "detected_at": now,
            "experience_score": round_to(score, 4),
            "customer_tier": st["tier"],
            "recent_touchpoints": [
                {
                    "event_id": e[0],
                    "occurred_at": e[1],
                    "channel": e[2],
                    "touchpoint": e[3],
                    "outcome": e[4],
                    "sentiment": e[5],
                }
                for e in st["r"]
            ],
            "time_to_recover_ms": ttr,
            "attributes": attrs or {},
        }

    def _fire_due(self, customer, st, t, now, out) -> bool:
        """Engine::fire_due: SLA before expiry at the same instant, in deadline order. True when the
        customer has been idle past the TTL at `t`."""
        r = self.rules
        cases = st["c"]
        while cases:
            due = None  # (deadline, is_expiry, index)
            for i, c in enumerate(cases):
                sla = c[OPENED] + r.sla_ms
                if not c[ESC] and sla <= t and (due is None or (sla, False) < (due[0], due[1])):
                    due = (sla, False, i)
                exp = c[LAST_TOUCH] + r.expiry_ms
                if exp <= t and (due is None or (exp, True) < (due[0], due[1])):
                    due = (exp, True, i)
            if due is None:
                break
            deadline, is_expiry, i = due
            case = cases[i]
            if is_expiry:
                del cases[i]
                reason = (
                    f"No touchpoint on journey '{case[J]}' for {format_duration_ms(r.expiry_ms)} since the case "
                    f"opened by {case[RULE]}; closed without recovery - review whether the customer was lost."
                )
                out.append(
                    self._alert(
                        customer, st, case, "EXPIRED", "case_expired", case[SEV], deadline, case[LAST_EVENT], reason, now
                    )
                )
            else:
                before = list(case)
                case[ESC] = True
                case[SEV] = min(case[SEV] + 1, CRITICAL)
                reason = (
                    f"Case on journey '{case[J]}' ({case[RULE]}) has been open {format_duration_ms(r.sla_ms)} "
                    f"without recovery; escalate and contact the customer by {case[CHAN]}."
                )
                out.append(
                    self._alert(
                        customer, st, before, "ESCALATED", "sla_breach", case[SEV], deadline, case[LAST_EVENT], reason, now
                    )
                )
        last = st["r"][-1][1] if st["r"] else None
        return last is not None and last + r.ttl_ms <= t

    def _episode(self, st, journey, t):
        w = self.rules.episode_window_ms
        eps = [e for e in st["ep"] if e[0] == journey or t - (e[1] + e[2]) <= w]
        held = next((i for i, e in enumerate(eps) if e[0] == journey), None)
        if held is not None:
            if t - eps[held][1] > w:
                eps[held] = [journey, t, 0, 0, 0]
        else:
            if len(eps) >= self.rules.max_journeys:
                stalest = min(range(len(eps)), key=lambda i: eps[i][1] + eps[i][2])
                eps[stalest] = eps[-1]  # Vec::swap_remove
                eps.pop()
            eps.append([journey, t, 0, 0, 0])
            held = len(eps) - 1
        st["ep"] = eps
        return eps[held]

    @staticmethod
    def _reset_episode(st, journey, t):
        for i, e in enumerate(st["ep"]):
            if e[0] == journey:
                st["ep"][i] = [journey, t, 0, 0, 0]
                return

    def apply(self, ev: dict, st, now: int):
        """Engine::apply for one in-order touchpoint. Returns (state, changed, alerts)."""
        r = self.rules
        out: list = []
        customer = ev["customer_id"]
        t = ev["occurred_at"]
        if st is None:
            st = new_state()
        if self._fire_due(customer, st, t, now, out):
            st = new_state()
        event_id = ev["event_id"]
        for e in st["r"]:
            if e[0] == event_id:
                return st, bool(out), out  # a duplicate changes nothing (timers may have fired)

        tier = ev["customer_tier"]
        if tier is not None:
            st["tier"] = tier
            tier_mult = r.tiers.get(tier, 1.0)
        else:
            tier_mult = r.tiers.get(st["tier"], 1.0) if st["tier"] is not None else 1.0
        outcome, sentiment, channel = ev["outcome"], ev["sentiment"], ev["channel"]
        polarity = r.polarity(outcome, sentiment)
        weight, rec_channel = r.stake_of_type(ev["touchpoint"])
        if ev["kind"] == "ENGAGEMENT":
            weight *= r.engagement_factor

        last = st["r"][-1][1] if st["r"] else None
        score = r.decay(st["score"], last, t)
        if polarity == NEGATIVE:
            score -= weight * tier_mult
        elif polarity == POSITIVE:
            score += weight * tier_mult
        st["score"] = score

        journey = ev["journey"]
        ep = self._episode(st, journey, t)
        if ev["direction"] == "INBOUND":
            if ev["kind"] == "INTERACTION":
                ep[3] = min(ep[3] + 1, 65535)
            ep[4] |= CHANNEL_BIT[channel]
        ep[2] = min(t - ep[1], 0xFFFFFFFF)
        ep_first, ep_contacts, ep_channels = ep[1], ep[3], ep[4]

        ring = st["r"]
        ring.append([event_id, t, channel, ev["touchpoint"], outcome, thousandths(sentiment)])
        if len(ring) > r.recent:
            del ring[0]

        cases = st["c"]
        at = next((i for i, c in enumerate(cases) if c[J] == journey), None)
        if polarity == POSITIVE and at is not None and cases[at][OPENED] <= t:
            case = cases.pop(at)
            self._reset_episode(st, journey, t)
            took = t - case[OPENED]
            reason = (
                f"Recovered: {ev['touchpoint']} ended {outcome} on {channel} after {format_duration_ms(took)}; "
                "no further action needed."
            )
            out.append(
                self._alert(
                    customer, st, case, "RECOVERED", "recovered", case[SEV], t, event_id, reason, now,
                    ttr=took, attrs=r.shareable(ev["attributes"]),
                )
            )
        elif polarity == POSITIVE:
            self._reset_episode(st, journey, t)
        elif polarity == NEGATIVE and at is not None:
            case = cases[at]
            case[LAST_TOUCH] = max(case[LAST_TOUCH], t)
            case[LAST_EVENT] = event_id
            if not case[ESC]:
                case[ESC] = True
                case[SEV] = min(case[SEV] + 1, CRITICAL)
                reason = (
                    f"Another negative touchpoint on an open case: {ev['touchpoint']} ended {outcome} on {channel} "
                    f"(journey '{journey}'); escalate and contact the customer by {case[CHAN]}."
                )
                out.append(
                    self._alert(
                        customer, st, case, "ESCALATED", "repeat_negative", case[SEV], t, event_id, reason, now,
                        attrs=r.shareable(ev["attributes"]),
                    )
                )
        elif at is not None:
            case = cases[at]
            case[LAST_TOUCH] = max(case[LAST_TOUCH], t)
            case[LAST_EVENT] = event_id
        else:
            found = self._evaluate(ev, st["tier"], polarity, weight, rec_channel, tier_mult, score, ep_first,
                                   ep_contacts, ep_channels)
            if found is not None:
                rule, severity, reason = found
                case_hash = fnv64(
                    customer.encode(), journey.encode(), t.to_bytes(8, "little", signed=True), event_id.encode()
                )
                case = [journey, case_hash, t, t, event_id, rule, severity, rec_channel, False, weight * tier_mult]
                alert = self._alert(
                    customer, st, case, "OPEN", rule, severity, t, event_id, reason, now,
                    attrs=r.shareable(ev["attributes"]),
                )
                if len(cases) >= r.max_open_cases:
                    oldest = min(range(len(cases)), key=lambda i: (cases[i][OPENED], i))
                    old = cases.pop(oldest)
                    why = (
                        f"Closed without recovery to make room: the customer has {r.max_open_cases} newer open cases; "
                        f"review journey '{old[J]}' by hand."
                    )
                    out.append(self._alert(customer, st, old, "EXPIRED", "case_limit", old[SEV], t, old[LAST_EVENT],
                                           why, now))
                cases.append(case)
                out.append(alert)
        return st, True, out

    def _evaluate(self, ev, tier, polarity, weight, channel, tier_mult, score, ep_first, contacts, channels):
        """Engine::evaluate: the first matching rule names the case; severity is the highest."""
        r = self.rules
        t = ev["occurred_at"]
        found = None

        def consider(rule, severity, reason):
            nonlocal found
            if found is None:
                found = [rule, severity, reason()]
            else:
                found[1] = max(found[1], severity)

        negative = polarity == NEGATIVE
        if r.critical_enabled and negative and weight >= r.critical_min_stakes:
            severity = CRITICAL if tier_mult >= r.critical_tier else HIGH

            def why():
                s = ev["sentiment"]
                with_s = f" with sentiment {s:.2f}" if s is not None else ""
                who = "the customer" if tier is None else f"a {tier} customer"
                return (
                    f"Moment of truth went wrong: {ev['touchpoint']} ended {ev['outcome']}{with_s} on {ev['channel']} "
                    f"for {who} (journey '{ev['journey']}'); contact them by {channel} now."
                )

            consider("critical_negative", severity, why)
        if r.decline_enabled and negative and score <= r.decline_threshold:
            consider(
                "experience_decline",
                MEDIUM,
                lambda: (
                    f"Experience score fell to {score:.2f} (threshold {fmt_f64(r.decline_threshold)}) after "
                    f"{ev['touchpoint']} ended {ev['outcome']} on {ev['channel']} (journey '{ev['journey']}'); "
                    f"reach out by {channel}."
                ),
            )
        age = t - ep_first
        if r.effort_enabled and contacts >= r.effort_min and age <= r.effort_window_ms:
            consider(
                "high_effort",
                MEDIUM,
                lambda: (
                    f"Customer has contacted us {contacts} times about '{ev['journey']}' within "
                    f"{format_duration_ms(age)} without success; have one person own it and call them by {channel}."
                ),
            )
        n_channels = bin(channels).count("1")
        if r.hopping_enabled and n_channels >= r.hopping_min and age <= r.hopping_window_ms:
            names = ", ".join(c for c in CHANNELS if channels & CHANNEL_BIT[c])
            consider(
                "channel_hopping",
                MEDIUM,
                lambda: (
                    f"Customer tried {n_channels} channels ({names}) for '{ev['journey']}' without success; have one "
                    f"person own it and reach them by {channel}."
                ),
            )
        return found


def fmt_f64(x: float) -> str:
    """Rust's Display for f64: -6 for -6.0."""
    return str(int(x)) if x == int(x) else repr(x)


# ------------------------------------------------------------------------------------------------
# The quixstreams application.


def cpu_seconds() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--brokers", default=os.environ.get("CX_KAFKA_BROKERS", "127.0.0.1:19092"))
    p.add_argument("--topic", required=True, help="input topic (Confluent-framed Avro touchpoints)")
    p.add_argument("--alert-topic", required=True, help="where alerts go (must exist)")
    p.add_argument("--group", default=None, help="consumer group (default: a fresh one)")
    p.add_argument("--events", type=int, required=True, help="stop after processing this many records")
    p.add_argument("--fetch-wait-ms", type=int, default=None, help="consumer fetch.wait.max.ms")
    p.add_argument(
        "--commit-interval",
        type=float,
        default=0.1,
        help="seconds between quixstreams checkpoints (producer flush, changelog, offset commit); "
        "default 0.1 = cx-sentinel's processing.commit_interval",
    )
    p.add_argument("--config", default=str(ROOT / "config" / "default.toml"), help="rules (cx-sentinel config)")
    p.add_argument("--schema", default=str(ROOT / "schemas" / "touchpoint.avsc"))
    p.add_argument("--no-changelog", action="store_true", help="quixstreams use_changelog_topics=False")
    p.add_argument("--timeout", type=float, default=None, help="give up after this many seconds")
    p.add_argument("--state-dir", default=None, help="RocksDB directory (default: a temporary one, removed)")
    p.add_argument("--loglevel", default="WARNING")
    return p.parse_args(argv)


def touchpoint_schema(path: str):
    import fastavro

    with open(path) as f:
        schema = json.load(f)
    for field in schema["fields"]:
        t = field["type"]
        if isinstance(t, dict) and t.get("logicalType") == "timestamp-millis":
            # Keep occurred_at an int of milliseconds (as cx-sentinel does), not a datetime.
            field["type"] = {"type": t["type"]}
    return fastavro.parse_schema(schema)


def changelog_topic_name(group: str, topic: str, store: str = "default") -> str:
    """TopicManager._internal_name('changelog', topic, store) for a plain input topic."""
    return f"changelog__{group}--{topic}--{store}"


def wait_for_topic(brokers: str, name: str, timeout: float = 30.0) -> bool:
    """Waits until the broker lists `name` with a leader for every partition (a librdkafka 2.12
    client that fetches a topic tansu 0.6 does not fully know yet can crash: see
    examples/e2e_bench/service.rs, wait_for_topic). False if it does not show up in time."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": brokers})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        md = admin.list_topics(topic=name, timeout=5).topics.get(name)
        if (
            md is not None
            and md.error is None
            and md.partitions
            and all(p.leader >= 0 and p.error is None for p in md.partitions.values())
        ):
            return True
        time.sleep(0.1)
    return False


def main(argv=None) -> int:
    args = parse_args(argv)
    started_wall, started_cpu = time.monotonic(), cpu_seconds()
    import logging

    import fastavro
    from quixstreams import Application
    from quixstreams.models.serializers import Deserializer

    logging.basicConfig(stream=sys.stderr, level=args.loglevel)
    log = lambda msg: print(f"quix_sentinel: {msg}", file=sys.stderr, flush=True)  # noqa: E731

    rules = Rules(Path(args.config))
    engine = Engine(rules)
    schema = touchpoint_schema(args.schema)
    reader = fastavro.schemaless_reader
    group = args.group or f"quix-sentinel-{os.getpid()}-{time.time_ns()}"
    n = args.events
    if n < 1:
        raise SystemExit("--events must be at least 1")

    class ConfluentAvro(Deserializer):
        """Magic byte 0, 4-byte schema id (not checked), then the Avro datum."""

        def __call__(self, value: bytes, ctx):
            if len(value) < 5 or value[0] != 0:
                raise ValueError("not a Confluent-framed record")
            return reader(io.BytesIO(memoryview(value)[5:]), schema, None)

    consumer_extra = {
        # cx-sentinel's and the baseline's consumers set this (service::kafka::consumer_config): the
        # 1 s default leaves the consumer idle once its local queue is over the prefetch thresholds.
        "fetch.queue.backoff.ms": 10,
    }
    if args.fetch_wait_ms is not None:
        # tansu 0.6 sleeps this long before answering every fetch (docs/benchmark.md).
        consumer_extra["fetch.wait.max.ms"] = args.fetch_wait_ms

    state_dir = args.state_dir or tempfile.mkdtemp(prefix="quix-sentinel-state-")
    count = 0
    first = None  # (wall, cpu) after the first record
    last = None
    failed: list[str] = []
    app = None

    def on_processed(topic, partition, offset):
        nonlocal count, first, last
        count += 1
        if count == 1:
            first = (time.monotonic(), cpu_seconds())
        if count == n:
            last = (time.monotonic(), cpu_seconds())
            app.stop()

    app = Application(
        broker_address=args.brokers,
        consumer_group=group,
        auto_offset_reset="earliest",
        commit_interval=args.commit_interval,
        consumer_extra_config=consumer_extra,
        state_dir=state_dir,
        loglevel=args.loglevel,
        use_changelog_topics=not args.no_changelog,
        # Lets quixstreams create its changelog topic (tansu auto-creates nothing; the input and
        # alert topics must exist already).
        auto_create_topics=True,
        on_message_processed=on_processed,
    )
    input_topic = app.topic(args.topic, key_deserializer="str", value_deserializer=ConfluentAvro())
    fix_retention(input_topic)
    alert_topic = app.topic(args.alert_topic, key_serializer="str", value_serializer="json")

    def now_ms() -> int:
        return time.time_ns() // 1_000_000

    def process(ev, state):
        st, changed, alerts = engine.apply(ev, state.get("c"), now_ms())
        if changed:
            state.set("c", st)
        return alerts

    sdf = app.dataframe(input_topic)
    sdf = sdf.apply(process, stateful=True, expand=True)
    sdf.to_topic(alert_topic)
    # quixstreams created its changelog topic through the admin API just now (sdf.apply with
    # stateful=True); make sure every partition has a leader before anything writes to it.
    changelog = None if args.no_changelog else changelog_topic_name(group, args.topic)
    if changelog is not None and not wait_for_topic(args.brokers, changelog):
        log(f"warning: the changelog topic {changelog} is not listed with leaders after 30 s")

    timer = None
    if args.timeout:

        def give_up():
            failed.append(f"only {count} of {n} records within {args.timeout:.0f} s")
            app.stop()

        timer = threading.Timer(args.timeout, give_up)
        timer.daemon = True
        timer.start()
    try:
        app.run()
    finally:
        if timer:
            timer.cancel()
        if args.state_dir is None:
            shutil.rmtree(state_dir, ignore_errors=True)
    ended_wall, ended_cpu = time.monotonic(), cpu_seconds()
    if failed or last is None:
        log(failed[0] if failed else f"stopped after {count} of {n} records")
        return 1
    window_events = n - 1
    wall = max(last[0] - first[0], 1e-9)
    cpu = last[1] - first[1]
    result = {
        "peer": "quixstreams",
        "quixstreams_version": __import__("quixstreams").__version__,
        "python": sys.version.split()[0],
        "events": n,
        "window_events": window_events,
        "wall_s": wall,
        "cpu_s": cpu,
        "events_per_s": window_events / wall,
        "cpu_us_per_event": cpu * 1e6 / max(window_events, 1),
        "cores_used": cpu / wall,
        "alerts": sum(engine.alerts_by_rule.values()),
        "alerts_by_rule": dict(sorted(engine.alerts_by_rule.items())),
        "total_wall_s": ended_wall - started_wall,
        "total_cpu_s": ended_cpu - started_cpu,
        "group": group,
        "changelog_topic": changelog,
        "commit_interval_s": args.commit_interval,
        "fetch_wait_ms": args.fetch_wait_ms,
    }
    print(json.dumps(result), flush=True)
    return 0


def fix_retention(topic) -> None:
    """quixstreams derives its changelog topic's config from the input topic's `retention.ms` (a
    KeyError without it); tansu 0.6's DescribeConfigs lists only the configs a topic was created
    with, so a topic created without one has none. Fill in Kafka's "no limit"."""
    extra = topic.broker_config.extra_config
    extra.setdefault("retention.ms", "-1")
    extra.setdefault("retention.bytes", "-1")


if __name__ == "__main__":
    sys.exit(main())
