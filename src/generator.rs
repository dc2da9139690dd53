//! Synthetic touchpoints: realistic multi-channel journeys, some of which go wrong.
//!
//! A [`Generator`] is a deterministic, seedable, infinite source of [`Touchpoint`]s for the demo,
//! the benchmarks and tests. Same config, same sequence, on every platform.
//!
//! - **Customers** are picked with a power-law skew (a few hot customers, a long cold tail), then
//!   scattered over the id space (`cust-000123`) so the hot ones are not simply the lowest ids.
//!   About 5% are `vip`, about 55% `standard`, the rest carry no tier.
//! - **Journeys** are multi-step and multi-channel: paying a bill, booking dinner, tracking a
//!   parcel, cancelling a contract, reading lab results, upgrading a plan, browsing, marketing.
//!   A customer has at most one journey in progress; its steps are emitted in order over time.
//!   The table of journeys in progress is bounded.
//! - **Trouble**: about `trouble_rate` of journeys go wrong the way the rules detect (a moment of
//!   truth failing with negative sentiment, four inbound contacts without success, hopping across
//!   three channels); about half of those are recovered later by an outbound callback.
//! - **Event time** advances by `1000 / events_per_second` ms per event on average (exponential
//!   gaps), so `occurred_at` never decreases. Event ids are lower-case UUID-format strings derived
//!   from the seed and a counter, unique by construction.

use crate::model::{Channel, Direction, Millis, Outcome, Touchpoint, TouchpointKind};
use std::collections::{BTreeMap, HashMap};

/// Most journeys in progress at once (the bounded per-customer table).
const MAX_ACTIVE: u64 = 4_096;
/// Customer rank = `customers * u^SKEW` for uniform `u`: the top 1% of customers start about 10%
/// of journeys, the top 20% about 45%.
const SKEW: f64 = 2.0;
/// Share of troubled journeys that end with a successful outbound callback.
const RECOVERY_RATE: f64 = 0.5;
/// Share of journeys done in the mobile app rather than on the web site.
const APP_RATE: f64 = 0.35;
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GeneratorConfig {
    pub seed: u64,
    /// Distinct customers (`cust-000000` up to `customers - 1`).
    pub customers: u64,
    /// Event time of the first touchpoint, ms since the epoch.
    pub start_ms: i64,
    /// Event-time rate: `occurred_at` advances by `1000 / events_per_second` ms per event on average.
    pub events_per_second: f64,
    /// Fraction of journeys that go wrong (default 0.02).
    pub trouble_rate: f64,
}

impl Default for GeneratorConfig {
    fn default() -> Self {
        Self {
            seed: 42,
            customers: 100_000,
            start_ms: 1_772_359_200_000,
            events_per_second: 1_000.0,
            trouble_rate: 0.02,
        }
    }
}

/// The SplitMix64 finalizer: a bijection on `u64` that scrambles well.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// SplitMix64: tiny, fast and good enough for synthetic data.
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }

    /// Uniform in `[0, 1)`.
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: u64) -> u64 {
        ((u128::from(self.next_u64()) * u128::from(n)) >> 64) as u64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Index into `weights`, chosen in proportion to them.
    fn weighted(&mut self, weights: impl Iterator<Item = u32> + Clone) -> usize {
        let total: u64 = weights.clone().map(u64::from).sum();
        let mut pick = self.below(total.max(1));
        for (i, w) in weights.enumerate() {
            if pick < u64::from(w) {
                return i;
            }
            pick -= u64::from(w);
        }
        0
    }
}

/// An attribute a step carries, with a generated value.
#[derive(Debug, Clone, Copy)]
enum Attr {
    None,
    /// `amount_eur`
    Amount,
    /// `order_id`
    Order,
    /// `party_size`
    Party,
    /// `health.test` (sensitive: dropped before anything leaves the service)
    Health,
}

/// One step of a journey template.
#[derive(Debug, Clone, Copy)]
struct Step {
    channel: Channel,
    kind: TouchpointKind,
    direction: Direction,
    touchpoint: &'static str,
    outcome: Outcome,
    /// Sentiment drawn uniformly from this range (rounded to hundredths); none when absent.
    sentiment: Option<(f64, f64)>,
    /// Handled by a person (gets an `agent_id`).
    agent: bool,
    attr: Attr,
}

impl Step {
    const fn new(
        channel: Channel,
        kind: TouchpointKind,
        direction: Direction,
        touchpoint: &'static str,
        outcome: Outcome,
    ) -> Self {
        Self {
            channel,
            kind,
            direction,
            touchpoint,
            outcome,
            sentiment: None,
            agent: false,
            attr: Attr::None,
        }
    }
    const fn feel(mut self, lo: f64, hi: f64) -> Self {
        self.sentiment = Some((lo, hi));
        self
    }
    const fn agent(mut self) -> Self {
        self.agent = true;
        self
    }
    const fn attr(mut self, attr: Attr) -> Self {
        self.attr = attr;
        self
    }
}

/// The customer contacts us (INBOUND INTERACTION).
const fn contact(channel: Channel, touchpoint: &'static str, outcome: Outcome) -> Step {
    Step::new(
        channel,
        TouchpointKind::Interaction,
        Direction::Inbound,
        touchpoint,
        outcome,
    )
}
/// The customer looks at something (INBOUND ENGAGEMENT).
const fn visit(channel: Channel, touchpoint: &'static str, outcome: Outcome) -> Step {
    Step::new(
        channel,
        TouchpointKind::Engagement,
        Direction::Inbound,
        touchpoint,
        outcome,
    )
}
/// We tell the customer something (OUTBOUND ENGAGEMENT).
const fn notify(channel: Channel, touchpoint: &'static str, outcome: Outcome) -> Step {
    Step::new(
        channel,
        TouchpointKind::Engagement,
        Direction::Outbound,
        touchpoint,
        outcome,
    )
}
/// A person calls the customer back and sorts it out (OUTBOUND INTERACTION, SUCCESS).
const fn callback(touchpoint: &'static str) -> Step {
    Step::new(
        Channel::Voice,
        TouchpointKind::Interaction,
        Direction::Outbound,
        touchpoint,
        Outcome::Success,
    )
    .feel(0.4, 0.9)
    .agent()
}

use Channel::{Chat, Email, MobileApp, Sms, Store, Voice, Web};
use Outcome::{Abandoned, Escalated, Failure, Pending, Success, Unknown};

/// A kind of journey: how it usually goes, and how it goes wrong.
struct Template {
    journey: &'static str,
    /// Relative frequency among journeys that go well.
    weight: u32,
    normal: &'static [&'static [Step]],
    /// Relative frequency among journeys that go wrong (0: this journey does not go wrong).
    trouble_weight: u32,
    /// Each ends in something a rule detects; no step before the last trigger is positive.
    trouble: &'static [&'static [Step]],
    /// Appended to a troubled journey that gets recovered.
    recovery: &'static [Step],
}

// Invariant of every `normal` path: fewer than 4 inbound interactions and fewer than 3 inbound
// channels before a positive touchpoint, and no negative moment of truth, so journeys that go well
// never page anyone (checked by `no_trouble_no_alerts`).
const TEMPLATES: &[Template] = &[
    Template {
        journey: "browsing",
        weight: 28,
        normal: &[
            &[
                visit(Web, "catalog.browse", Success),
                visit(Web, "catalog.product.view", Success),
            ],
            &[
                visit(MobileApp, "catalog.browse", Success),
                visit(MobileApp, "cart.view", Abandoned),
            ],
            &[visit(Web, "catalog.search", Success)],
        ],
        trouble_weight: 0,
        trouble: &[],
        recovery: &[],
    },
    Template {
        journey: "marketing",
        weight: 20,
        normal: &[
            &[notify(Email, "marketing.newsletter", Unknown)],
            &[
                notify(Email, "marketing.offer", Success),
                visit(Web, "marketing.offer.click", Success),
            ],
            &[notify(Sms, "marketing.offer", Unknown)],
        ],
        trouble_weight: 0,
        trouble: &[],
        recovery: &[],
    },
    Template {
        journey: "billing",
        weight: 14,
        normal: &[
            &[
                visit(Web, "billing.statement.view", Success),
                contact(Web, "payment.transfer", Success)
                    .feel(0.3, 0.9)
                    .attr(Attr::Amount),
            ],
            &[
                notify(Email, "billing.statement.ready", Success),
                visit(Web, "billing.statement.view", Success),
                contact(Web, "payment.transfer", Success)
                    .feel(0.3, 0.9)
                    .attr(Attr::Amount),
            ],
        ],
        trouble_weight: 30,
        trouble: &[&[
            visit(Web, "billing.statement.view", Success),
            contact(Web, "payment.transfer", Failure)
                .feel(-0.9, -0.5)
                .attr(Attr::Amount),
        ]],
        recovery: &[callback("payment.resolution")],
    },
    Template {
        journey: "parcel-delivery",
        weight: 12,
        normal: &[
            &[
                notify(Email, "order.delivery.dispatched", Success).attr(Attr::Order),
                visit(Web, "order.delivery.status", Success),
                notify(Sms, "order.delivery.delivered", Success),
            ],
            &[
                notify(Email, "order.delivery.dispatched", Success).attr(Attr::Order),
                notify(Sms, "order.delivery.delivered", Success),
            ],
        ],
        trouble_weight: 20,
        // Three channels, no answer: channel hopping.
        trouble: &[&[
            notify(Email, "order.delivery.dispatched", Success).attr(Attr::Order),
            visit(Web, "order.delivery.status", Pending).feel(-0.2, 0.0),
            contact(Chat, "order.delivery.status", Pending)
                .feel(-0.25, -0.05)
                .agent(),
            contact(Voice, "order.delivery.status", Pending)
                .feel(-0.29, -0.1)
                .agent(),
        ]],
        recovery: &[
            callback("order.delivery.rescheduled"),
            notify(Sms, "order.delivery.delivered", Success),
        ],
    },
    Template {
        journey: "dinner-reservation",
        weight: 8,
        normal: &[
            &[
                contact(Web, "reservation.booking", Success)
                    .feel(0.3, 0.8)
                    .attr(Attr::Party),
                notify(Sms, "reservation.confirmation", Success),
                notify(Sms, "reservation.reminder", Success),
            ],
            &[
                contact(Voice, "reservation.booking", Success)
                    .feel(0.3, 0.8)
                    .agent()
                    .attr(Attr::Party),
                notify(Sms, "reservation.confirmation", Success),
            ],
        ],
        trouble_weight: 10,
        // Confirmed by SMS, but no table when they arrive.
        trouble: &[&[
            contact(Web, "reservation.booking", Success)
                .feel(0.3, 0.8)
                .attr(Attr::Party),
            notify(Sms, "reservation.confirmation", Success),
            contact(Store, "reservation.checkin", Failure).feel(-0.95, -0.6),
        ]],
        recovery: &[callback("reservation.apology")],
    },
    Template {
        journey: "cancellation",
        weight: 6,
        normal: &[
            &[
                contact(Voice, "ivr.menu", Pending),
                contact(Voice, "cancellation.request", Success)
                    .feel(0.0, 0.5)
                    .agent(),
            ],
            &[
                contact(Chat, "cancellation.request", Success)
                    .feel(0.1, 0.6)
                    .agent(),
                notify(Email, "cancellation.confirmation", Success),
            ],
        ],
        trouble_weight: 20,
        trouble: &[
            // Four contacts, nobody finishes it: high effort.
            &[
                contact(Voice, "ivr.menu", Pending),
                contact(Voice, "ivr.menu", Abandoned),
                contact(Chat, "cancellation.request", Pending)
                    .feel(-0.25, 0.0)
                    .agent(),
                contact(Voice, "cancellation.request", Pending)
                    .feel(-0.29, -0.1)
                    .agent(),
            ],
            // Phone, chat, email: channel hopping.
            &[
                contact(Voice, "ivr.menu", Abandoned),
                contact(Chat, "cancellation.request", Pending)
                    .feel(-0.2, 0.1)
                    .agent(),
                contact(Email, "cancellation.request", Pending),
            ],
        ],
        recovery: &[
            callback("cancellation.confirmed"),
            notify(Email, "cancellation.confirmation", Success),
        ],
    },
    Template {
        journey: "lab-results",
        weight: 6,
        normal: &[&[
            notify(Email, "health.result.notify", Success).attr(Attr::Health),
            visit(MobileApp, "health.result.view", Success),
        ]],
        trouble_weight: 10,
        trouble: &[&[
            notify(Email, "health.result.notify", Success).attr(Attr::Health),
            contact(MobileApp, "health.result.view", Failure)
                .feel(-0.8, -0.4)
                .attr(Attr::Health),
        ]],
        recovery: &[callback("health.result.callback")],
    },
    Template {
        journey: "plan-upgrade",
        weight: 6,
        normal: &[&[
            visit(Web, "plan.compare", Success),
            contact(Web, "account.plan.upgrade", Success).feel(0.3, 0.8),
            notify(Email, "account.plan.receipt", Success),
        ]],
        trouble_weight: 10,
        trouble: &[&[
            visit(Web, "plan.compare", Success),
            contact(Web, "account.plan.upgrade", Failure).feel(-0.7, -0.35),
            contact(Chat, "account.plan.upgrade", Escalated)
                .feel(-0.9, -0.5)
                .agent(),
        ]],
        recovery: &[callback("account.plan.fixed")],
    },
];

/// A journey in progress: 16 bytes, no heap.
#[derive(Debug, Clone, Copy)]
struct Active {
    customer: u64,
    template: u8,
    /// Index into `normal`, or into `trouble` when `troubled`.
    variant: u8,
    step: u8,
    troubled: bool,
    recover: bool,
    /// Web steps happen in the mobile app instead.
    app: bool,
}

impl Active {
    fn template(&self) -> &'static Template {
        &TEMPLATES[self.template as usize]
    }

    fn path(&self) -> (&'static [Step], &'static [Step]) {
        let t = self.template();
        if self.troubled {
            let recovery = if self.recover { t.recovery } else { &[] };
            (t.trouble[self.variant as usize], recovery)
        } else {
            (t.normal[self.variant as usize], &[])
        }
    }

    /// The step to emit now, and whether it is the last.
    fn current(&self) -> (&'static Step, bool) {
        let (main, tail) = self.path();
        let i = self.step as usize;
        let step = main.get(i).unwrap_or_else(|| &tail[i - main.len()]);
        (step, i + 1 >= main.len() + tail.len())
    }
}

/// Deterministic source of realistic touchpoints. Infinite: use `take(n)`.
pub struct Generator {
    cfg: GeneratorConfig,
    rng: Rng,
    customers: u64,
    /// `rank * stride + offset (mod customers)` scatters hot ranks over the id space.
    stride: u64,
    offset: u64,
    max_active: usize,
    active: Vec<Active>,
    /// Customer -> index in `active`.
    by_customer: HashMap<u64, usize>,
    elapsed_ms: f64,
    mean_gap_ms: f64,
    emitted: u64,
    id_salt: u64,
    id_mask: u64,
}

fn gcd(mut a: u64, mut b: u64) -> u64 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

const LOW_48: u64 = (1 << 48) - 1;

/// A bijection on 48-bit values (odd multiplications and xorshifts), so counters stay distinct.
fn scramble48(mut x: u64) -> u64 {
    x = x.wrapping_mul(0x9fb2_1c65_1e98_df25) & LOW_48;
    x ^= x >> 23;
    x = x.wrapping_mul(0xc2b2_ae3d_27d4_eb4f) & LOW_48;
    x ^ (x >> 29)
}

impl Generator {
    pub fn new(cfg: GeneratorConfig) -> Self {
        let customers = cfg.customers.max(1);
        let mut rng = Rng(mix(cfg.seed ^ 0x6a09_e667_f3bc_c908));
        let mut stride = (GOLDEN >> 17) % customers;
        while gcd(stride, customers) != 1 {
            stride += 1;
        }
        let offset = rng.below(customers);
        let mean_gap_ms = if cfg.events_per_second.is_finite() && cfg.events_per_second > 0.0 {
            1_000.0 / cfg.events_per_second
        } else {
            1.0
        };
        let max_active = MAX_ACTIVE.min(customers.div_ceil(4)) as usize;
        let id_salt = rng.next_u64();
        let id_mask = rng.next_u64() & LOW_48;
        Self {
            cfg,
            rng,
            customers,
            stride,
            offset,
            max_active,
            active: Vec::with_capacity(max_active),
            by_customer: HashMap::with_capacity(max_active),
            elapsed_ms: 0.0,
            mean_gap_ms,
            emitted: 0,
            id_salt,
            id_mask,
        }
    }

    pub fn config(&self) -> &GeneratorConfig {
        &self.cfg
    }

    /// Touchpoints emitted so far.
    pub fn emitted(&self) -> u64 {
        self.emitted
    }

    /// The next touchpoint: the next step of a journey in progress, or the first of a new one.
    pub fn next_touchpoint(&mut self) -> Touchpoint {
        // Exponential gap with the configured mean; `1 - u` is in (0, 1].
        self.elapsed_ms += -(1.0 - self.rng.unit()).ln() * self.mean_gap_ms;
        let occurred_at = self.cfg.start_ms.saturating_add(self.elapsed_ms as Millis);

        // Start journeys less often as the table fills: it settles well below `max_active`.
        let fill = self.active.len() as f64 / self.max_active as f64;
        let slot = if self.active.is_empty() || (fill < 1.0 && !self.rng.chance(fill)) {
            let customer = self.pick_customer();
            match self.by_customer.get(&customer) {
                Some(&i) => i,
                None => self.begin(customer),
            }
        } else {
            self.rng.below(self.active.len() as u64) as usize
        };

        let journey = self.active[slot];
        let (step, last) = journey.current();
        if last {
            self.finish(slot);
        } else {
            self.active[slot].step += 1;
        }
        let tp = self.touchpoint(&journey, step, occurred_at);
        self.emitted += 1;
        tp
    }

    /// A customer index, hot ranks far more often than cold ones.
    fn pick_customer(&mut self) -> u64 {
        let u = self.rng.unit();
        let rank = ((u.powf(SKEW) * self.customers as f64) as u64).min(self.customers - 1);
        ((u128::from(rank) * u128::from(self.stride) + u128::from(self.offset)) % u128::from(self.customers))
            as u64
    }

    /// Starts a journey for `customer`; returns its slot.
    fn begin(&mut self, customer: u64) -> usize {
        let rate = self.cfg.trouble_rate;
        let troubled = rate > 0.0 && self.rng.chance(rate);
        let (template, variant) = if troubled {
            let t = self.rng.weighted(TEMPLATES.iter().map(|t| t.trouble_weight));
            (t, self.rng.below(TEMPLATES[t].trouble.len() as u64))
        } else {
            let t = self.rng.weighted(TEMPLATES.iter().map(|t| t.weight));
            (t, self.rng.below(TEMPLATES[t].normal.len() as u64))
        };
        let journey = Active {
            customer,
            template: template as u8,
            variant: variant as u8,
            step: 0,
            troubled,
            recover: troubled && self.rng.chance(RECOVERY_RATE),
            app: self.rng.chance(APP_RATE),
        };
        self.active.push(journey);
        let slot = self.active.len() - 1;
        self.by_customer.insert(customer, slot);
        slot
    }

    fn finish(&mut self, slot: usize) {
        let done = self.active.swap_remove(slot);
        self.by_customer.remove(&done.customer);
        if let Some(moved) = self.active.get(slot) {
            self.by_customer.insert(moved.customer, slot);
        }
    }

    /// `vip` for about 5% of customers, `standard` for about 55%, none for the rest; fixed per
    /// customer for a given seed.
    fn tier(&self, customer: u64) -> Option<&'static str> {
        match mix(self.cfg.seed ^ customer.wrapping_mul(GOLDEN)) % 100 {
            0..5 => Some("vip"),
            5..60 => Some("standard"),
            _ => None,
        }
    }

    /// A lower-case hyphenated UUID (version 4 layout) unique per counter value below 2^48.
    fn event_id(&self, n: u64) -> String {
        let hi = mix(self.id_salt ^ n.wrapping_mul(GOLDEN));
        let hi = (hi & !0xf000) | 0x4000;
        let lo = mix(hi ^ self.id_salt) & 0x3fff_0000_0000_0000
            | 0x8000_0000_0000_0000
            | (scramble48(n) ^ self.id_mask);
        let bytes = (u128::from(hi) << 64 | u128::from(lo)).to_be_bytes();
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = String::with_capacity(36);
        for (i, b) in bytes.iter().enumerate() {
            if matches!(i, 4 | 6 | 8 | 10) {
                s.push('-');
            }
            s.push(HEX[usize::from(b >> 4)] as char);
            s.push(HEX[usize::from(b & 15)] as char);
        }
        s
    }

    fn touchpoint(&mut self, journey: &Active, step: &Step, occurred_at: Millis) -> Touchpoint {
        let channel = if journey.app && step.channel == Web {
            MobileApp
        } else {
            step.channel
        };
        let sentiment = step.sentiment.map(|(lo, hi)| {
            let s = lo + (hi - lo) * self.rng.unit();
            (s * 100.0).round() / 100.0
        });
        let agent_id = step.agent.then(|| format!("agent-{:04}", self.rng.below(400)));
        let mut attributes = BTreeMap::new();
        match step.attr {
            Attr::None => {}
            Attr::Amount => {
                let cents = 500 + self.rng.below(120_000);
                attributes.insert("amount_eur".into(), format!("{}.{:02}", cents / 100, cents % 100));
            }
            Attr::Order => {
                attributes.insert(
                    "order_id".into(),
                    format!("ord-{:08}", self.rng.below(100_000_000)),
                );
            }
            Attr::Party => {
                attributes.insert("party_size".into(), (2 + self.rng.below(7)).to_string());
            }
            Attr::Health => {
                const TESTS: [&str; 4] = ["lipid-panel", "blood-count", "thyroid", "vitamin-d"];
                let test = TESTS[self.rng.below(TESTS.len() as u64) as usize];
                attributes.insert("health.test".into(), test.into());
            }
        }
        Touchpoint {
            event_id: self.event_id(self.emitted),
            customer_id: format!("cust-{:06}", journey.customer),
            occurred_at,
            channel,
            kind: step.kind,
            direction: step.direction,
            journey: journey.template().journey.to_string(),
            touchpoint: step.touchpoint.to_string(),
            outcome: step.outcome,
            sentiment,
            customer_tier: self.tier(journey.customer).map(str::to_string),
            agent_id,
            attributes,
        }
    }
}

impl Iterator for Generator {
    type Item = Touchpoint;

    fn next(&mut self) -> Option<Touchpoint> {
        Some(self.next_touchpoint())
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        (usize::MAX, None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use crate::engine::{Effect, Engine, Stream};
    use crate::model::{AlertStatus, RecoveryAlert};
    use std::collections::{HashMap, HashSet};
    use std::sync::Arc;

    fn generator(seed: u64, customers: u64, trouble_rate: f64) -> Generator {
        Generator::new(GeneratorConfig {
            seed,
            customers,
            trouble_rate,
            ..GeneratorConfig::default()
        })
    }

    fn alerts_of(events: impl IntoIterator<Item = Touchpoint>) -> Vec<RecoveryAlert> {
        let engine = Arc::new(Engine::new(Config::default()));
        let mut stream = Stream::new(engine);
        let mut out = Vec::new();
        for (i, ev) in events.into_iter().enumerate() {
            stream.push(ev, i as u64, crate::engine::ARRIVAL_UNCHECKED, 0, &mut out);
        }
        stream.flush(None, 0, &mut out);
        assert!(
            !out.iter()
                .any(|e| matches!(e, Effect::Late { .. } | Effect::Duplicate { .. })),
            "monotone, unique events are never late or duplicate"
        );
        out.into_iter()
            .filter_map(|e| match e {
                Effect::Alert { alert, .. } => Some(*alert),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn same_seed_same_sequence() {
        let a: Vec<_> = generator(7, 1_000, 0.05).take(3_000).collect();
        let b: Vec<_> = generator(7, 1_000, 0.05).take(3_000).collect();
        assert_eq!(a, b);
        let c: Vec<_> = generator(8, 1_000, 0.05).take(3_000).collect();
        assert_ne!(a, c);
    }

    #[test]
    fn event_ids_are_unique_uuids() {
        let mut seen = HashSet::new();
        for tp in generator(1, 5_000, 0.02).take(10_000) {
            let id = tp.event_id.as_bytes();
            assert_eq!(id.len(), 36);
            for (i, &c) in id.iter().enumerate() {
                if matches!(i, 8 | 13 | 18 | 23) {
                    assert_eq!(c, b'-', "{}", tp.event_id);
                } else {
                    assert!(
                        c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
                        "{}",
                        tp.event_id
                    );
                }
            }
            assert_eq!(id[14], b'4', "version nibble: {}", tp.event_id);
            assert!(seen.insert(tp.event_id), "duplicate id");
        }
    }

    #[test]
    fn event_time_is_monotone_at_the_requested_rate() {
        let cfg = GeneratorConfig {
            events_per_second: 500.0,
            ..GeneratorConfig::default()
        };
        let start = cfg.start_ms;
        let events: Vec<_> = Generator::new(cfg).take(10_000).collect();
        assert!(events.windows(2).all(|w| w[0].occurred_at <= w[1].occurred_at));
        assert!(events[0].occurred_at >= start);
        // 10k events at 500/s span about 20 s.
        let span = events[9_999].occurred_at - start;
        assert!((18_000..22_000).contains(&span), "span {span} ms");
    }

    #[test]
    fn customers_are_skewed_and_tiers_fixed() {
        let customers = 10_000;
        let mut per_customer: HashMap<String, (u64, Option<String>)> = HashMap::new();
        for tp in generator(3, customers, 0.02).take(50_000) {
            assert!(tp.customer_id.starts_with("cust-") && tp.customer_id.len() == 11);
            let e = per_customer
                .entry(tp.customer_id.clone())
                .or_insert((0, tp.customer_tier.clone()));
            e.0 += 1;
            assert_eq!(e.1, tp.customer_tier, "tier is fixed per customer");
        }
        let mut counts: Vec<u64> = per_customer.values().map(|v| v.0).collect();
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top_1pct: u64 = counts.iter().take((customers / 100) as usize).sum();
        assert!(
            top_1pct > 50_000 / 20,
            "top 1% of customers have {top_1pct} of 50k events"
        );
        let median = counts[counts.len() / 2];
        assert!(
            counts[0] > 20 * median,
            "hottest {} vs median {median}",
            counts[0]
        );
        let vip = per_customer
            .values()
            .filter(|v| v.1.as_deref() == Some("vip"))
            .count() as f64
            / per_customer.len() as f64;
        assert!((0.02..0.09).contains(&vip), "vip share {vip}");
    }

    #[test]
    fn journeys_are_multi_channel_and_in_order() {
        let mut channels = HashSet::new();
        let mut journeys = HashSet::new();
        let mut steps: HashMap<String, Vec<String>> = HashMap::new();
        for tp in generator(5, 2_000, 0.02).take(20_000) {
            channels.insert(tp.channel);
            journeys.insert(tp.journey.clone());
            steps.entry(tp.customer_id).or_default().push(tp.touchpoint);
        }
        assert!(channels.len() >= 7, "{channels:?}");
        assert_eq!(journeys.len(), TEMPLATES.len(), "{journeys:?}");
        // A booking confirmation always follows its booking for the same customer.
        for seq in steps.values() {
            if let Some(i) = seq.iter().position(|t| t == "reservation.confirmation") {
                assert!(seq[..i].iter().any(|t| t == "reservation.booking"), "{seq:?}");
            }
        }
    }

    #[test]
    fn trouble_pages_a_few_customers_and_some_recover() {
        let events: Vec<_> = generator(11, 2_000, 0.02).take(20_000).collect();
        let customers: HashSet<_> = events.iter().map(|e| e.customer_id.clone()).collect();
        let alerts = alerts_of(events);
        let opened: Vec<_> = alerts.iter().filter(|a| a.status == AlertStatus::Open).collect();
        let rules: HashSet<&str> = opened.iter().map(|a| a.rule.as_str()).collect();
        for rule in ["critical_negative", "high_effort", "channel_hopping"] {
            assert!(rules.contains(rule), "no {rule} alert: {rules:?}");
        }
        assert!(
            alerts.iter().any(|a| a.status == AlertStatus::Recovered),
            "some troubled journeys recover"
        );
        let paged: HashSet<_> = opened.iter().map(|a| &a.customer_id).collect();
        let share = paged.len() as f64 / customers.len() as f64;
        assert!(
            share > 0.0 && share < 0.25,
            "{} of {} customers paged",
            paged.len(),
            customers.len()
        );
        assert!(
            alerts.iter().all(|a| !a.attributes.contains_key("health.test")),
            "sensitive attributes never leave"
        );
    }

    #[test]
    fn no_trouble_no_alerts() {
        let alerts = alerts_of(generator(13, 300, 0.0).take(20_000));
        assert!(
            alerts.is_empty(),
            "journeys that go well paged: {:?}",
            alerts.first()
        );
    }
}
