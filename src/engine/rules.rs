//! The configured rules, compiled for the hot path: polarity, stakes and tier lookups.

use crate::config::{Config, glob_match};
use crate::model::{Channel, Millis, Outcome, Touchpoint, TouchpointKind};

/// Whether a touchpoint counts against or for the customer's experience.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Polarity {
    Negative,
    Neutral,
    Positive,
}

/// Stakes of a touchpoint type: its weight and where a human should reach out.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Stake {
    pub weight: f64,
    pub channel: Channel,
}

/// Compiled [`Config`]: everything the engine consults per touchpoint.
#[derive(Debug, Clone)]
pub struct Rules {
    pub config: Config,
    negative_outcomes: [bool; 6],
    positive_outcomes: [bool; 6],
    pub lateness_ms: Millis,
    pub skew_ms: Millis,
    pub idle_timeout_ms: Millis,
    pub half_life_ms: f64,
    pub sla_ms: Millis,
    pub case_expiry_ms: Millis,
    pub ttl_ms: Millis,
    pub effort_window_ms: Millis,
    pub hopping_window_ms: Millis,
    pub episode_window_ms: Millis,
    pub ack_sla_ms: Millis,
    pub reopen_window_ms: Millis,
}

/// [`Case::queue`](super::state::Case) of a case no route matched: the queue `"default"`.
pub const NO_ROUTE: u16 = u16::MAX;

fn ms(d: std::time::Duration) -> Millis {
    d.as_millis().min(i64::MAX as u128) as Millis
}

impl Rules {
    pub fn new(config: Config) -> Self {
        let mut negative_outcomes = [false; 6];
        for o in &config.rules.negative.outcomes {
            negative_outcomes[o.index()] = true;
        }
        let mut positive_outcomes = [false; 6];
        for o in &config.rules.positive.outcomes {
            positive_outcomes[o.index()] = true;
        }
        let e = &config.engine;
        let r = &config.rules;
        Self {
            negative_outcomes,
            positive_outcomes,
            lateness_ms: ms(e.allowed_lateness),
            skew_ms: ms(e.max_clock_skew),
            idle_timeout_ms: ms(e.idle_timeout),
            half_life_ms: e.score_half_life.as_millis() as f64,
            sla_ms: ms(e.case_sla),
            case_expiry_ms: ms(e.case_expiry),
            ttl_ms: ms(e.customer_ttl),
            effort_window_ms: ms(r.high_effort.window),
            hopping_window_ms: ms(r.channel_hopping.window),
            episode_window_ms: ms(r.high_effort.window.max(r.channel_hopping.window)),
            // Zero: no ack SLA (the case's recovery SLA still runs).
            ack_sla_ms: ms(e.ack_sla),
            reopen_window_ms: ms(e.reopen_window),
            config,
        }
    }

    /// Negative wins over positive: a SUCCESS the customer is angry about is not a recovery.
    pub fn polarity(&self, outcome: Outcome, sentiment: Option<f64>) -> Polarity {
        let r = &self.config.rules;
        if self.negative_outcomes[outcome.index()] || sentiment.is_some_and(|s| s <= r.negative.sentiment) {
            Polarity::Negative
        } else if self.positive_outcomes[outcome.index()]
            || sentiment.is_some_and(|s| s >= r.positive.sentiment)
        {
            Polarity::Positive
        } else {
            Polarity::Neutral
        }
    }

    /// Stakes of a touchpoint type (first matching pattern, else the default), before the
    /// ENGAGEMENT factor.
    pub fn stake_of_type(&self, touchpoint: &str) -> Stake {
        let s = &self.config.rules.stakes;
        s.patterns
            .iter()
            .find(|p| glob_match(&p.pattern, touchpoint))
            .map(|p| Stake {
                weight: p.weight,
                channel: p.channel.unwrap_or(s.default_channel),
            })
            .unwrap_or(Stake {
                weight: s.default_weight,
                channel: s.default_channel,
            })
    }

    /// Applies the ENGAGEMENT factor to a type's stakes.
    pub fn stake(&self, type_stake: Stake, kind: TouchpointKind) -> Stake {
        match kind {
            TouchpointKind::Interaction => type_stake,
            TouchpointKind::Engagement => Stake {
                weight: type_stake.weight * self.config.rules.stakes.engagement_factor,
                ..type_stake
            },
        }
    }

    /// The first `rules.routing` row for a case opening on `journey` by `touchpoint` for a
    /// customer of `tier`, as its index ([`NO_ROUTE`] when none matches). Only when a case opens.
    pub fn route(&self, journey: &str, touchpoint: &str, tier: Option<&str>) -> u16 {
        self.config
            .rules
            .routing
            .iter()
            .position(|r| {
                glob_match(&r.journey, journey)
                    && glob_match(&r.touchpoint, touchpoint)
                    && (r.tiers.is_empty() || tier.is_some_and(|t| r.tiers.iter().any(|x| x == t)))
            })
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(NO_ROUTE)
    }

    /// The queue a route index names.
    pub fn queue_name(&self, route: u16) -> &str {
        self.config
            .rules
            .routing
            .get(usize::from(route))
            .map_or(crate::model::DEFAULT_QUEUE, |r| r.queue.as_str())
    }

    /// The channel a route overrides, if any.
    pub fn route_channel(&self, route: u16) -> Option<Channel> {
        self.config
            .rules
            .routing
            .get(usize::from(route))
            .and_then(|r| r.channel)
    }

    /// The first route that names `queue` (a restored case's queue, written by name so the table
    /// may change between runs); [`NO_ROUTE`] when no row names it any more.
    pub fn route_of_queue(&self, queue: &str) -> u16 {
        self.config
            .rules
            .routing
            .iter()
            .position(|r| r.queue == queue)
            .and_then(|i| u16::try_from(i).ok())
            .unwrap_or(NO_ROUTE)
    }

    /// Customer value multiplier of a tier.
    pub fn tier_multiplier(&self, tier: &str) -> f64 {
        self.config.rules.tiers.get(tier).copied().unwrap_or(1.0)
    }

    /// Whether an attribute key must never leave the service.
    pub fn is_sensitive(&self, key: &str) -> bool {
        self.config
            .privacy
            .sensitive_attributes
            .iter()
            .any(|p| glob_match(p, key))
    }

    /// The touchpoint's attributes minus every sensitive key.
    pub fn shareable_attributes(&self, tp: &Touchpoint) -> std::collections::BTreeMap<String, String> {
        tp.attributes
            .iter()
            .filter(|(k, _)| !self.is_sensitive(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// `score` decayed from `from` to `to` with the configured half-life.
    pub fn decay(&self, score: f64, from: Millis, to: Millis) -> f64 {
        if to <= from || score == 0.0 {
            return score;
        }
        score * (-(to - from) as f64 / self.half_life_ms * std::f64::consts::LN_2).exp()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> Rules {
        Rules::new(Config::default())
    }

    #[test]
    fn polarity_follows_outcome_and_sentiment() {
        let r = rules();
        assert_eq!(r.polarity(Outcome::Failure, None), Polarity::Negative);
        assert_eq!(r.polarity(Outcome::Pending, Some(-0.3)), Polarity::Negative);
        assert_eq!(r.polarity(Outcome::Pending, Some(-0.29)), Polarity::Neutral);
        assert_eq!(r.polarity(Outcome::Success, None), Polarity::Positive);
        assert_eq!(r.polarity(Outcome::Unknown, Some(0.3)), Polarity::Positive);
        assert_eq!(r.polarity(Outcome::Success, Some(-0.8)), Polarity::Negative);
    }

    #[test]
    fn stakes_from_patterns() {
        let r = rules();
        let pay = r.stake_of_type("payment.transfer");
        assert_eq!(
            pay,
            Stake {
                weight: 3.0,
                channel: Channel::Voice
            }
        );
        assert_eq!(r.stake_of_type("ivr.menu").weight, 1.0);
        assert_eq!(r.stake(pay, TouchpointKind::Engagement).weight, 0.75);
        assert_eq!(r.tier_multiplier("vip"), 2.0);
        assert_eq!(r.tier_multiplier("standard"), 1.0);
    }

    #[test]
    fn score_halves_every_half_life() {
        let r = rules();
        let week = 7 * 86_400_000;
        assert!((r.decay(-8.0, 0, week) + 4.0).abs() < 1e-9);
        assert!((r.decay(-8.0, 0, 2 * week) + 2.0).abs() < 1e-9);
        assert_eq!(r.decay(-8.0, 5, 5), -8.0);
    }

    #[test]
    fn sensitive_attributes() {
        let r = rules();
        assert!(r.is_sensitive("health.result"));
        assert!(r.is_sensitive("ssn"));
        assert!(!r.is_sensitive("order_id"));
    }
}
