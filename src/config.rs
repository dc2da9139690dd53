//! Configuration: the TOML file, `CX_SENTINEL__*` env overrides, defaults, and validation naming the key.

use crate::codec::Format;
use crate::model::{Channel, Outcome};
use figment::Figment;
use figment::providers::{Env, Format as _, Serialized, Toml};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Prefix of environment overrides; `__` separates nesting levels
/// (`CX_SENTINEL__KAFKA__BROKERS` sets `kafka.brokers`).
pub const ENV_PREFIX: &str = "CX_SENTINEL__";

/// Why a configuration was refused. Every variant names the file and, where it can, the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {file}: cannot read: {source}")]
    Unreadable {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("config file {file}: key `{key}`: {problem}")]
    Invalid {
        file: PathBuf,
        key: String,
        problem: String,
    },
}

/// The whole configuration. Pipeline semantics live in the file; env may override any key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub engine: EngineConfig,
    pub rules: RulesConfig,
    pub privacy: PrivacyConfig,
    pub kafka: KafkaConfig,
    pub input: TopicFormat,
    pub output: TopicFormat,
    pub schema_registry: SchemaRegistryConfig,
    pub http: HttpConfig,
    pub service: ServiceConfig,
    pub log: LogConfig,
    pub state: StateConfig,
    pub processing: ProcessingConfig,
}

/// Delivery guarantee.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProcessingConfig {
    pub guarantee: Guarantee,
    /// exactly_once: how often the transaction (alerts, changelog, input offsets) commits. Alerts
    /// become visible to `read_committed` readers only then: this is the latency cost.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

impl Default for ProcessingConfig {
    fn default() -> Self {
        Self {
            guarantee: Guarantee::AtLeastOnce,
            commit_interval: Duration::from_millis(100),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Guarantee {
    AtLeastOnce,
    ExactlyOnce,
}

/// Durable per-customer state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// Write every state change to `changelog_topic` and restore from it on assignment.
    pub changelog: bool,
    /// Compacted topic keyed by customer id, with as many partitions as the input topic.
    pub changelog_topic: String,
    /// Customers held per instance; beyond it the least recently active customers without an
    /// open case are dropped (metric `cx_sentinel_customers_shed_total`). 0 = no cap.
    pub max_customers: usize,
    /// A failed restore is tried again with backoff (the instance stays not ready) for this
    /// long, then the process exits non-zero: processing on partial state would write over the
    /// good state in the changelog.
    #[serde(with = "humantime_serde")]
    pub restore_timeout: Duration,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            changelog: true,
            changelog_topic: "cx-sentinel-state".into(),
            max_customers: 5_000_000,
            restore_timeout: Duration::from_secs(300),
        }
    }
}

/// Where to read and write.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, `host:port[,host:port]`.
    pub brokers: String,
    pub group_id: String,
    pub input_topic: String,
    pub alert_topic: String,
    pub dlq_topic: String,
    /// Case actions from the people who step in (acknowledge, resolve, reopen), keyed by
    /// customer id, with as many partitions as the input topic: partition `p` of both is read by
    /// the same instance.
    pub action_topic: String,
    /// Passed to librdkafka as-is, for both consumer and producer (security.protocol,
    /// sasl.*, ssl.*, fetch sizes, ...). Keys set here win over cx-sentinel's defaults.
    pub librdkafka_options: BTreeMap<String, String>,
}

/// Whether a librdkafka option carries a secret (passwords, keys, OAuth settings): its value is
/// never printed.
pub fn is_secret_option(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "oauthbearer",
        "ssl.key.pem",
        "ssl_key",
        "keystore",
        "sasl.jaas",
    ]
    .iter()
    .any(|s| k.contains(s))
}

/// `Debug` without secrets: `kafka.librdkafka_options` values whose key names a secret print
/// as `<redacted>` (a config is logged at start and shows up in panics and test output).
impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options: BTreeMap<&str, &str> = self
            .librdkafka_options
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if is_secret_option(k) {
                        "<redacted>"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("group_id", &self.group_id)
            .field("input_topic", &self.input_topic)
            .field("alert_topic", &self.alert_topic)
            .field("dlq_topic", &self.dlq_topic)
            .field("action_topic", &self.action_topic)
            .field("librdkafka_options", &options)
            .finish()
    }
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "cx-sentinel".into(),
            input_topic: "touchpoints".into(),
            alert_topic: "recovery-alerts".into(),
            dlq_topic: "touchpoints.dlq".into(),
            action_topic: "recovery-actions".into(),
            librdkafka_options: BTreeMap::new(),
        }
    }
}

/// Encoding of one topic's records.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicFormat {
    pub format: Format,
    /// confluent-avro without a registry: on input, the schema ids accepted (empty = any id,
    /// read with the bundled schema); on output, the first is the id written.
    pub schema_ids: Vec<u32>,
}

/// Optional Confluent-compatible Schema Registry.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SchemaRegistryConfig {
    /// `https://host:port` or `http://host:port`; when set, input schema ids are looked up there
    /// and the alert schema is registered under `<alert_topic>-value`.
    pub url: Option<String>,
    /// Basic auth user; needs `password`. Excludes `bearer_token`.
    pub username: Option<String>,
    /// Basic auth password (a secret: set it through `CX_SENTINEL__SCHEMA_REGISTRY__PASSWORD`).
    pub password: Option<Secret>,
    /// Sent as `Authorization: Bearer <token>` (a secret: set it through
    /// `CX_SENTINEL__SCHEMA_REGISTRY__BEARER_TOKEN`).
    pub bearer_token: Option<Secret>,
    /// PEM file of CA certificates trusted for an `https://` registry, besides the system's.
    pub ca_file: Option<PathBuf>,
    /// Establishing the connection (TCP and TLS).
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// One whole request, connecting included.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long an id the registry does not know is remembered as unknown: its records are
    /// dead-lettered without asking again until then (a schema registered later is picked up).
    #[serde(with = "humantime_serde")]
    pub negative_cache_ttl: Duration,
}

impl Default for SchemaRegistryConfig {
    fn default() -> Self {
        Self {
            url: None,
            username: None,
            password: None,
            bearer_token: None,
            ca_file: None,
            connect_timeout: Duration::from_secs(5),
            timeout: Duration::from_secs(10),
            negative_cache_ttl: Duration::from_secs(5 * 60),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address of `/metrics`, `/health/*` and `/customers/{id}`.
    pub listen: String,
    /// `/customers/{id}` serves customer data only when this is set, and only to
    /// `Authorization: Bearer <token>`. Set it through `CX_SENTINEL__HTTP__AUTH_TOKEN` (a secret),
    /// not in the file. `/metrics` and `/health/*` stay open.
    pub auth_token: Option<Secret>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: "0.0.0.0:9464".into(),
            auth_token: None,
        }
    }
}

/// A secret string: `Debug` never prints it.
#[derive(Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServiceConfig {
    /// On SIGTERM/SIGINT: how long to finish in-flight work, flush and commit before giving up.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// `/health/live` answers 503 once no record was processed for this long while the consumer
    /// lag is above zero (a stalled pipeline: an orchestrator restarts it).
    #[serde(with = "humantime_serde")]
    pub stall_timeout: Duration,
}

impl Default for ServiceConfig {
    fn default() -> Self {
        Self {
            shutdown_timeout: Duration::from_secs(30),
            stall_timeout: Duration::from_secs(300),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` or `json`.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `cx_sentinel=debug,rdkafka=warn`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Event-time and state-size knobs.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct EngineConfig {
    /// How far behind the partition's event-time clock a touchpoint may arrive and still count.
    /// Touchpoints are acted on when they arrive whatever this is; a late one is applied where it
    /// belongs in event time and may correct an alert already published.
    #[serde(with = "humantime_serde")]
    pub allowed_lateness: Duration,
    /// A touchpoint stamped further ahead than this of its record's timestamp (live) or of the
    /// processing clock (replay) is dead-lettered as `future` and moves no clock.
    #[serde(with = "humantime_serde")]
    pub max_clock_skew: Duration,
    /// A partition with no input for this long follows the wall clock, so SLA escalations and
    /// expiries fire on time on quiet partitions.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Half-life of the experience score.
    #[serde(with = "humantime_serde")]
    pub score_half_life: Duration,
    /// A case open longer than this (event time) without recovery escalates (`sla_breach`).
    #[serde(with = "humantime_serde")]
    pub case_sla: Duration,
    /// A case with no touchpoints for this long expires.
    #[serde(with = "humantime_serde")]
    pub case_expiry: Duration,
    /// State of a customer idle this long is evicted.
    #[serde(with = "humantime_serde")]
    pub customer_ttl: Duration,
    /// Touchpoints kept per customer (and sent in an alert); 1..=10.
    pub recent_touchpoints: usize,
    /// Journeys tracked per customer at once; the stalest is dropped beyond this.
    pub max_journeys: usize,
    /// Open cases per customer; opening one more expires the oldest (rule `case_limit`).
    pub max_open_cases: usize,
    /// An OPEN (or REOPENED) case no agent has acknowledged within this (event time) escalates
    /// once (`ack_sla_breach`), as an on-call escalation policy pages the next person. Zero:
    /// no ack SLA (for teams that send no acknowledgements yet).
    #[serde(with = "humantime_serde")]
    pub ack_sla: Duration,
    /// A negative touchpoint on the journey this soon after an agent RESOLVED its case reopens it
    /// (REOPENED, one severity step up); resolved cases are held this long. Zero: never.
    #[serde(with = "humantime_serde")]
    pub reopen_window: Duration,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            allowed_lateness: Duration::from_secs(3_600),
            max_clock_skew: Duration::from_secs(5 * 60),
            idle_timeout: Duration::from_secs(1),
            score_half_life: Duration::from_secs(7 * 86_400),
            case_sla: Duration::from_secs(4 * 3_600),
            case_expiry: Duration::from_secs(30 * 86_400),
            customer_ttl: Duration::from_secs(30 * 86_400),
            recent_touchpoints: 10,
            max_journeys: 4,
            max_open_cases: 4,
            ack_sla: Duration::from_secs(15 * 60),
            reopen_window: Duration::from_secs(72 * 3_600),
        }
    }
}

/// Which touchpoints are negative, which positive, how much each counts, and when to page.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub negative: PolarityConfig,
    pub positive: PolarityConfig,
    pub stakes: StakesConfig,
    /// Customer value multipliers by tier; a tier not listed counts 1.0.
    pub tiers: BTreeMap<String, f64>,
    pub critical_negative: CriticalNegativeConfig,
    pub experience_decline: ExperienceDeclineConfig,
    pub high_effort: HighEffortConfig,
    pub channel_hopping: ChannelHoppingConfig,
    /// Which team gets a case and how to reach the customer, by segment; first match wins.
    pub routing: Vec<Route>,
}

/// One row of the routing table (`[[rules.routing]]`), matched when a case opens.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Glob over the journey; `*` (the default) matches any.
    #[serde(default = "any_glob")]
    pub journey: String,
    /// Glob over the dotted type of the touchpoint that opened the case.
    #[serde(default = "any_glob")]
    pub touchpoint: String,
    /// Customer tiers this row is for; empty (the default) = any tier, including none.
    #[serde(default)]
    pub tiers: Vec<String>,
    /// The team that gets the case.
    pub queue: String,
    /// Overrides the stakes table's recommended channel.
    #[serde(default)]
    pub channel: Option<Channel>,
}

fn any_glob() -> String {
    "*".to_string()
}

/// Longest queue name: it is a metric label and an alert field.
pub const MAX_QUEUE_BYTES: usize = 64;
/// Most rows in `rules.routing` (a case holds its row's index in 16 bits).
pub const MAX_ROUTES: usize = 1_000;

impl Default for RulesConfig {
    fn default() -> Self {
        Self {
            negative: PolarityConfig {
                outcomes: vec![Outcome::Failure, Outcome::Abandoned, Outcome::Escalated],
                sentiment: -0.3,
            },
            positive: PolarityConfig {
                outcomes: vec![Outcome::Success],
                sentiment: 0.3,
            },
            stakes: StakesConfig::default(),
            tiers: BTreeMap::from([("vip".to_string(), 2.0)]),
            critical_negative: CriticalNegativeConfig::default(),
            experience_decline: ExperienceDeclineConfig::default(),
            high_effort: HighEffortConfig::default(),
            channel_hopping: ChannelHoppingConfig::default(),
            routing: Vec::new(),
        }
    }
}

/// A touchpoint is of this polarity when its outcome is listed, or its sentiment is at or beyond
/// `sentiment` (at most, for negative; at least, for positive).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolarityConfig {
    pub outcomes: Vec<Outcome>,
    pub sentiment: f64,
}

/// How much a touchpoint counts, by glob pattern over its dotted type.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StakesConfig {
    pub default_weight: f64,
    pub default_channel: Channel,
    /// ENGAGEMENT touchpoints weigh this fraction of an INTERACTION.
    pub engagement_factor: f64,
    /// First matching pattern wins.
    pub patterns: Vec<StakePattern>,
}

impl Default for StakesConfig {
    fn default() -> Self {
        let moments = [
            "payment.*",
            "billing.*",
            "account.*",
            "reservation.*",
            "cancellation.*",
            "order.delivery*",
            "claim.*",
            "privacy.*",
            "health.*",
        ];
        Self {
            default_weight: 1.0,
            default_channel: Channel::Voice,
            engagement_factor: 0.25,
            patterns: moments
                .iter()
                .map(|p| StakePattern {
                    pattern: p.to_string(),
                    weight: 3.0,
                    channel: Some(Channel::Voice),
                })
                .collect(),
        }
    }
}

/// One row of the stakes table.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StakePattern {
    /// Glob over the dotted touchpoint type; `*` matches any run of characters.
    pub pattern: String,
    pub weight: f64,
    /// Recommended channel for a human to reach out on; `stakes.default_channel` if absent.
    #[serde(default)]
    pub channel: Option<Channel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CriticalNegativeConfig {
    pub enabled: bool,
    /// A negative touchpoint with at least these stakes opens a case at once (HIGH).
    pub min_stakes: f64,
    /// ...CRITICAL when the customer's tier multiplier is at least this.
    pub critical_tier_multiplier: f64,
}

impl Default for CriticalNegativeConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_stakes: 3.0,
            critical_tier_multiplier: 2.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExperienceDeclineConfig {
    pub enabled: bool,
    /// The decayed experience score at or below which a case opens (MEDIUM).
    pub threshold: f64,
}

impl Default for ExperienceDeclineConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            threshold: -6.0,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HighEffortConfig {
    pub enabled: bool,
    /// INBOUND INTERACTIONs on one journey within `window` with no SUCCESS.
    pub min_contacts: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for HighEffortConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_contacts: 4,
            window: Duration::from_secs(86_400),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChannelHoppingConfig {
    pub enabled: bool,
    /// Distinct channels on one journey within `window` with no SUCCESS.
    pub min_channels: u32,
    #[serde(with = "humantime_serde")]
    pub window: Duration,
}

impl Default for ChannelHoppingConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            min_channels: 3,
            window: Duration::from_secs(86_400),
        }
    }
}

/// What never leaves the service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Attribute keys (globs) dropped at decode time: never stored, logged or sent in an alert.
    pub sensitive_attributes: Vec<String>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        Self {
            sensitive_attributes: vec!["health.*".into(), "ssn".into(), "card_number".into()],
        }
    }
}

impl Config {
    /// Loads `file`, applies `CX_SENTINEL__*` environment overrides, and validates.
    pub fn load(file: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Unreadable {
            file: file.to_path_buf(),
            source,
        })?;
        Self::from_toml_with_env(&text, file, true)
    }

    /// Parses TOML text (named `file` in errors), optionally with env overrides, and validates.
    pub fn from_toml_with_env(text: &str, file: &Path, env: bool) -> Result<Config, ConfigError> {
        let mut figment = Figment::from(Serialized::defaults(Config::default())).merge(Toml::string(text));
        if env {
            figment = figment.merge(Env::prefixed(ENV_PREFIX).split("__"));
        }
        let config: Config = figment.extract().map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: describe_figment(e),
        })?;
        config.validate(file)?;
        Ok(config)
    }

    /// Checks every value a type cannot express; the error names the key.
    pub fn validate(&self, file: &Path) -> Result<(), ConfigError> {
        let bad = |key: &str, problem: String| ConfigError::Invalid {
            file: file.to_path_buf(),
            key: key.to_string(),
            problem,
        };
        let e = &self.engine;
        for (key, d) in [
            ("engine.score_half_life", e.score_half_life),
            ("engine.case_sla", e.case_sla),
            ("engine.case_expiry", e.case_expiry),
            ("engine.customer_ttl", e.customer_ttl),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero".into()));
            }
        }
        if e.allowed_lateness > Duration::from_secs(7 * 86_400) {
            return Err(bad(
                "engine.allowed_lateness",
                "must be at most 7 days (late touchpoints are remembered that long)".into(),
            ));
        }
        if e.allowed_lateness >= e.case_expiry {
            return Err(bad(
                "engine.allowed_lateness",
                format!(
                    "must be shorter than engine.case_expiry ({}): expiries wait for the lateness to pass",
                    humantime::format_duration(e.case_expiry)
                ),
            ));
        }
        if e.idle_timeout.is_zero() {
            return Err(bad("engine.idle_timeout", "must be longer than zero".into()));
        }
        if e.customer_ttl < e.case_expiry {
            return Err(bad(
                "engine.customer_ttl",
                format!(
                    "must be at least engine.case_expiry ({}), or open cases would vanish unexpired",
                    humantime::format_duration(e.case_expiry)
                ),
            ));
        }
        if !(1..=10).contains(&e.recent_touchpoints) {
            return Err(bad(
                "engine.recent_touchpoints",
                format!("must be 1..=10, got {}", e.recent_touchpoints),
            ));
        }
        if !(1..=32).contains(&e.max_journeys) {
            return Err(bad(
                "engine.max_journeys",
                format!("must be 1..=32, got {}", e.max_journeys),
            ));
        }
        if !(1..=32).contains(&e.max_open_cases) {
            return Err(bad(
                "engine.max_open_cases",
                format!("must be 1..=32, got {}", e.max_open_cases),
            ));
        }
        if e.reopen_window > e.customer_ttl {
            return Err(bad(
                "engine.reopen_window",
                format!(
                    "must be at most engine.customer_ttl ({}): a resolved case is held that long",
                    humantime::format_duration(e.customer_ttl)
                ),
            ));
        }
        let r = &self.rules;
        if r.routing.len() > MAX_ROUTES {
            return Err(bad(
                "rules.routing",
                format!("at most {MAX_ROUTES} entries, got {}", r.routing.len()),
            ));
        }
        for (i, route) in r.routing.iter().enumerate() {
            for (field, glob) in [("journey", &route.journey), ("touchpoint", &route.touchpoint)] {
                if glob.trim().is_empty() {
                    return Err(bad(
                        &format!("rules.routing[{i}].{field}"),
                        "must not be empty (use \"*\" for any)".into(),
                    ));
                }
            }
            let q = &route.queue;
            if q.trim().is_empty() || q.len() > MAX_QUEUE_BYTES || q.chars().any(char::is_control) {
                return Err(bad(
                    &format!("rules.routing[{i}].queue"),
                    format!("must be 1..={MAX_QUEUE_BYTES} bytes of printable text"),
                ));
            }
            if route.tiers.iter().any(|t| t.trim().is_empty()) {
                return Err(bad(
                    &format!("rules.routing[{i}].tiers"),
                    "must not hold an empty tier".into(),
                ));
            }
        }
        if !(-1.0..=1.0).contains(&r.negative.sentiment) {
            return Err(bad(
                "rules.negative.sentiment",
                format!("must be within [-1, 1], got {}", r.negative.sentiment),
            ));
        }
        if !(-1.0..=1.0).contains(&r.positive.sentiment) {
            return Err(bad(
                "rules.positive.sentiment",
                format!("must be within [-1, 1], got {}", r.positive.sentiment),
            ));
        }
        if r.positive.sentiment <= r.negative.sentiment {
            return Err(bad(
                "rules.positive.sentiment",
                "must be above rules.negative.sentiment".into(),
            ));
        }
        let weight_ok = |w: f64| w.is_finite() && w >= 0.0;
        if !weight_ok(r.stakes.default_weight) {
            return Err(bad(
                "rules.stakes.default_weight",
                "must be a finite number >= 0".into(),
            ));
        }
        if !(r.stakes.engagement_factor.is_finite() && (0.0..=1.0).contains(&r.stakes.engagement_factor)) {
            return Err(bad(
                "rules.stakes.engagement_factor",
                "must be within [0, 1]".into(),
            ));
        }
        for (i, p) in r.stakes.patterns.iter().enumerate() {
            if p.pattern.trim().is_empty() {
                return Err(bad(
                    &format!("rules.stakes.patterns[{i}].pattern"),
                    "must not be empty".into(),
                ));
            }
            if !weight_ok(p.weight) {
                return Err(bad(
                    &format!("rules.stakes.patterns[{i}].weight"),
                    "must be a finite number >= 0".into(),
                ));
            }
        }
        for (tier, m) in &r.tiers {
            if !(m.is_finite() && *m > 0.0) {
                return Err(bad(
                    &format!("rules.tiers.{tier}"),
                    "must be a finite number > 0".into(),
                ));
            }
        }
        if !(r.experience_decline.threshold.is_finite() && r.experience_decline.threshold < 0.0) {
            return Err(bad(
                "rules.experience_decline.threshold",
                "must be a negative number".into(),
            ));
        }
        if r.high_effort.min_contacts < 2 {
            return Err(bad("rules.high_effort.min_contacts", "must be at least 2".into()));
        }
        let month = Duration::from_secs(30 * 86_400);
        if r.high_effort.window > month {
            return Err(bad("rules.high_effort.window", "must be at most 30 days".into()));
        }
        if r.channel_hopping.window > month {
            return Err(bad(
                "rules.channel_hopping.window",
                "must be at most 30 days".into(),
            ));
        }
        if r.high_effort.window.is_zero() {
            return Err(bad("rules.high_effort.window", "must be longer than zero".into()));
        }
        if !(2..=9).contains(&r.channel_hopping.min_channels) {
            return Err(bad(
                "rules.channel_hopping.min_channels",
                "must be 2..=9 (there are nine channels)".into(),
            ));
        }
        if r.channel_hopping.window.is_zero() {
            return Err(bad(
                "rules.channel_hopping.window",
                "must be longer than zero".into(),
            ));
        }
        let k = &self.kafka;
        for (key, value) in [
            ("kafka.brokers", &k.brokers),
            ("kafka.group_id", &k.group_id),
            ("kafka.input_topic", &k.input_topic),
            ("kafka.alert_topic", &k.alert_topic),
            ("kafka.dlq_topic", &k.dlq_topic),
            ("kafka.action_topic", &k.action_topic),
        ] {
            if value.trim().is_empty() {
                return Err(bad(key, "must not be empty".into()));
            }
        }
        if k.input_topic == k.alert_topic || k.input_topic == k.dlq_topic {
            return Err(bad(
                "kafka.input_topic",
                "must differ from kafka.alert_topic and kafka.dlq_topic".into(),
            ));
        }
        if [&k.input_topic, &k.alert_topic, &k.dlq_topic].contains(&&k.action_topic) {
            return Err(bad(
                "kafka.action_topic",
                "must differ from kafka.input_topic, kafka.alert_topic and kafka.dlq_topic".into(),
            ));
        }
        if self.output.format == Format::ConfluentAvro
            && self.output.schema_ids.is_empty()
            && self.schema_registry.url.is_none()
        {
            return Err(bad(
                "output.schema_ids",
                "confluent-avro output needs a schema id to write: set output.schema_ids = [ID] or schema_registry.url"
                    .into(),
            ));
        }
        self.validate_schema_registry(&bad)?;
        if self.http.listen.parse::<std::net::SocketAddr>().is_err() {
            return Err(bad(
                "http.listen",
                format!("'{}' is not an address like 0.0.0.0:9464", self.http.listen),
            ));
        }
        // The pipeline ticks at this interval (a zero interval panics in the timer).
        if self.processing.commit_interval.is_zero() {
            return Err(bad(
                "processing.commit_interval",
                "must be longer than zero".into(),
            ));
        }
        // Options the service's guarantees rest on: overriding them would silently break them.
        let eos = self.processing.guarantee == Guarantee::ExactlyOnce;
        for key in self.kafka.librdkafka_options.keys() {
            let why = match key.as_str() {
                "enable.auto.offset.store" => {
                    Some("offsets are stored only once a record's alerts are acknowledged")
                }
                "enable.idempotence" => {
                    Some("the producer must be idempotent (no duplicate or reordered alerts on retry)")
                }
                "group.id" => Some("set kafka.group_id instead"),
                "bootstrap.servers" | "metadata.broker.list" => Some("set kafka.brokers instead"),
                // Under exactly_once an id stable per instance is the user's to give (a restart
                // then aborts its predecessor's open transaction at once); without transactions
                // it would make every send fail.
                "transactional.id" if !eos => Some("only exactly_once uses transactions"),
                "isolation.level" | "enable.auto.commit" if eos => {
                    Some("exactly_once needs read_committed and offsets committed in the transaction")
                }
                _ => None,
            };
            if let Some(why) = why {
                return Err(bad(
                    &format!("kafka.librdkafka_options.\"{key}\""),
                    format!("cannot be overridden: {why}"),
                ));
            }
        }
        if eos && !self.state.changelog {
            return Err(bad(
                "processing.guarantee",
                "exactly_once needs state.changelog = true (state must roll back with an aborted transaction)".into(),
            ));
        }
        if self
            .http
            .auth_token
            .as_ref()
            .is_some_and(|t| t.expose().len() < 16)
        {
            return Err(bad(
                "http.auth_token",
                "must be at least 16 characters (it guards customer data)".into(),
            ));
        }
        if self.service.shutdown_timeout.is_zero() {
            return Err(bad("service.shutdown_timeout", "must be longer than zero".into()));
        }
        if self.service.stall_timeout.is_zero() {
            return Err(bad("service.stall_timeout", "must be longer than zero".into()));
        }
        if self.state.restore_timeout.is_zero() {
            return Err(bad("state.restore_timeout", "must be longer than zero".into()));
        }
        for (i, p) in self.privacy.sensitive_attributes.iter().enumerate() {
            if p.trim().is_empty() {
                return Err(bad(
                    &format!("privacy.sensitive_attributes[{i}]"),
                    "must not be empty".into(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_schema_registry(&self, bad: &dyn Fn(&str, String) -> ConfigError) -> Result<(), ConfigError> {
        let r = &self.schema_registry;
        if let Some(url) = &r.url {
            let Some(rest) = url
                .strip_prefix("https://")
                .or_else(|| url.strip_prefix("http://"))
            else {
                return Err(bad(
                    "schema_registry.url",
                    format!("'{url}' must start with https:// or http://"),
                ));
            };
            let authority = rest.split('/').next().unwrap_or_default();
            if authority.is_empty() {
                return Err(bad("schema_registry.url", format!("'{url}' names no host")));
            }
            // Credentials in the URL would be printed wherever the URL is (logs, errors); the
            // URL itself is not echoed here for the same reason.
            if authority.contains('@') {
                return Err(bad(
                    "schema_registry.url",
                    "must not carry credentials: set schema_registry.username and schema_registry.password"
                        .into(),
                ));
            }
            if r.ca_file.is_some() && url.starts_with("http://") {
                return Err(bad(
                    "schema_registry.ca_file",
                    "applies to https:// registries only, and schema_registry.url is http://".into(),
                ));
            }
        }
        match (&r.username, &r.password, &r.bearer_token) {
            (Some(_), _, Some(_)) | (None, Some(_), Some(_)) => {
                return Err(bad(
                    "schema_registry.bearer_token",
                    "set either it or schema_registry.username and schema_registry.password, not both".into(),
                ));
            }
            (Some(u), None, None) if !u.is_empty() => {
                return Err(bad(
                    "schema_registry.password",
                    "must be set with schema_registry.username".into(),
                ));
            }
            (None, Some(_), None) => {
                return Err(bad(
                    "schema_registry.username",
                    "must be set with schema_registry.password".into(),
                ));
            }
            _ => {}
        }
        if r.username.as_deref() == Some("") {
            return Err(bad("schema_registry.username", "must not be empty".into()));
        }
        for (key, secret) in [
            ("schema_registry.password", &r.password),
            ("schema_registry.bearer_token", &r.bearer_token),
        ] {
            if secret.as_ref().is_some_and(|s| s.expose().is_empty()) {
                return Err(bad(key, "must not be empty".into()));
            }
        }
        for (key, d) in [
            ("schema_registry.connect_timeout", r.connect_timeout),
            ("schema_registry.timeout", r.timeout),
        ] {
            if d.is_zero() {
                return Err(bad(key, "must be longer than zero".into()));
            }
        }
        // Shorter would ask the registry again for nearly every record of an unknown id.
        if r.negative_cache_ttl < Duration::from_secs(1) {
            return Err(bad(
                "schema_registry.negative_cache_ttl",
                "must be at least 1s".into(),
            ));
        }
        Ok(())
    }
}

/// Figment's error, flattened to one line that names the key path and what was wrong.
fn describe_figment(e: figment::Error) -> String {
    e.into_iter()
        .map(|err| {
            let key = err.path.join(".");
            let origin = err
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            let origin = if origin.contains("environment") {
                format!(" (from environment {ENV_PREFIX}*)")
            } else {
                String::new()
            };
            if key.is_empty() {
                format!("{}{origin}", err.kind)
            } else {
                format!("key `{key}`: {}{origin}", err.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

/// Matches `text` against a glob where `*` stands for any run of characters.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let mut parts = pattern.split('*');
    let first = parts.next().unwrap_or("");
    let Some(mut rest) = text.strip_prefix(first) else {
        return false;
    };
    let pieces: Vec<&str> = parts.collect();
    let Some((last, middle)) = pieces.split_last() else {
        return rest.is_empty();
    };
    for piece in middle {
        match rest.find(piece) {
            Some(at) => rest = &rest[at + piece.len()..],
            None => return false,
        }
    }
    rest.len() >= last.len() && rest.ends_with(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml_with_env(text, Path::new("test.toml"), false)
    }

    #[test]
    fn routing_rows_are_validated_naming_the_key() {
        let c = parse("[[rules.routing]]\ntouchpoint = \"payment.*\"\ntiers = [\"vip\"]\nqueue = \"private-banking-desk\"\nchannel = \"VOICE\"\n").unwrap();
        assert_eq!(c.rules.routing[0].journey, "*");
        let e = parse("[[rules.routing]]\nqueue = \"a\"\n[[rules.routing]]\nqueue = \"\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("rules.routing[1].queue"), "{e}");
        let e = parse("[[rules.routing]]\nqueue = \"a\"\nchannel = \"PIGEON\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("channel"), "{e}");
        // Zero turns the ack SLA off, as for `reopen_window`.
        assert!(parse("[engine]\nack_sla = \"0s\"\n").is_ok());
        let e = parse("[engine]\nreopen_window = \"60d\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("engine.reopen_window"), "{e}");
    }

    #[test]
    fn lateness_must_be_shorter_than_case_expiry_and_idle_timeout_positive() {
        let e = parse("[engine]\nallowed_lateness = \"2d\"\ncase_expiry = \"1d\"\ncustomer_ttl = \"1d\"")
            .unwrap_err();
        assert!(e.to_string().contains("engine.allowed_lateness"), "{e}");
        let e = parse("[engine]\nidle_timeout = \"0s\"").unwrap_err();
        assert!(e.to_string().contains("engine.idle_timeout"), "{e}");
    }

    #[test]
    fn options_the_guarantees_rest_on_cannot_be_overridden() {
        for (key, extra) in [
            ("enable.auto.offset.store", ""),
            ("enable.idempotence", ""),
            ("group.id", ""),
            ("transactional.id", ""),
            ("isolation.level", "[processing]\nguarantee = \"exactly_once\"\n"),
            (
                "enable.auto.commit",
                "[processing]\nguarantee = \"exactly_once\"\n",
            ),
        ] {
            let text = format!("{extra}[kafka.librdkafka_options]\n\"{key}\" = \"x\"\n");
            let e = parse(&text).unwrap_err().to_string();
            assert!(
                e.contains(key) && e.contains("cannot be overridden"),
                "{key}: {e}"
            );
        }
        // isolation.level is the user's to choose under at-least-once, a per-instance
        // transactional.id under exactly-once.
        assert!(parse("[kafka.librdkafka_options]\n\"isolation.level\" = \"read_committed\"\n").is_ok());
        let eos_id = "[processing]\nguarantee = \"exactly_once\"\n[kafka.librdkafka_options]\n\"transactional.id\" = \"cx-1\"\n";
        assert!(parse(eos_id).is_ok());
    }

    #[test]
    fn a_zero_commit_interval_is_rejected_whatever_the_guarantee() {
        let e = parse("[processing]\ncommit_interval = \"0s\"\n").unwrap_err();
        assert!(e.to_string().contains("processing.commit_interval"), "{e}");
    }

    #[test]
    fn the_customer_token_is_checked_and_never_printed() {
        assert!(parse("[http]\nauth_token = \"short\"\n").is_err());
        let c = parse("[http]\nauth_token = \"0123456789abcdef-token\"\n").unwrap();
        assert_eq!(
            c.http.auth_token.as_ref().map(Secret::expose),
            Some("0123456789abcdef-token")
        );
        assert!(!format!("{c:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn debug_never_prints_a_secret_option() {
        let c = parse(
            "[kafka.librdkafka_options]\n\"sasl.password\" = \"hunter2-secret\"\n\"sasl.username\" = \"cx\"\n\"ssl.key.password\" = \"k3y\"\n",
        )
        .unwrap();
        let text = format!("{c:?}");
        assert!(!text.contains("hunter2") && !text.contains("k3y"), "{text}");
        assert!(
            text.contains("<redacted>") && text.contains("sasl.username"),
            "{text}"
        );
    }

    #[test]
    fn defaults_match_the_documented_rules() {
        let c = parse("").unwrap();
        assert_eq!(c.engine.allowed_lateness, Duration::from_secs(3600));
        assert_eq!(c.engine.max_clock_skew, Duration::from_secs(300));
        assert_eq!(c.engine.idle_timeout, Duration::from_secs(1));
        assert_eq!(c.engine.case_sla, Duration::from_secs(4 * 3600));
        assert_eq!(c.rules.tiers["vip"], 2.0);
        assert_eq!(c.rules.high_effort.min_contacts, 4);
        assert_eq!(c.rules.stakes.patterns.len(), 9);
    }

    #[test]
    fn unknown_key_is_named() {
        let err = parse("[engine]\nlatenes = \"1m\"\n").unwrap_err().to_string();
        assert!(err.contains("test.toml"), "{err}");
        assert!(err.contains("latenes"), "{err}");
    }

    #[test]
    fn bad_duration_is_named() {
        let err = parse("[engine]\ncase_sla = \"four hours\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("engine.case_sla"), "{err}");
    }

    #[test]
    fn invalid_value_names_key_and_problem() {
        let err = parse("[rules.experience_decline]\nthreshold = 2.0\n")
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "config file test.toml: key `rules.experience_decline.threshold`: must be a negative number"
        );
        let err = parse("[rules.tiers]\ngold = 0\n").unwrap_err().to_string();
        assert!(err.contains("rules.tiers.gold"), "{err}");
    }

    #[test]
    fn service_keys_validated() {
        let err = parse("[kafka]\nbrokers = \"\"\n").unwrap_err().to_string();
        assert!(err.contains("kafka.brokers"), "{err}");
        let err = parse("[output]\nformat = \"confluent-avro\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("output.schema_ids"), "{err}");
        let err = parse("[input]\nformat = \"xml\"\n").unwrap_err().to_string();
        assert!(err.contains("input.format") && err.contains("xml"), "{err}");
        let err = parse("[http]\nlisten = \"everywhere\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("http.listen"), "{err}");
        let c = parse("[kafka.librdkafka_options]\n\"security.protocol\" = \"SASL_SSL\"\n").unwrap();
        assert_eq!(c.kafka.librdkafka_options["security.protocol"], "SASL_SSL");
    }

    #[test]
    fn schema_registry_keys_are_validated_by_name() {
        for (text, key) in [
            ("url = \"ftp://r:8081\"", "schema_registry.url"),
            ("url = \"r:8081\"", "schema_registry.url"),
            ("url = \"https://\"", "schema_registry.url"),
            ("url = \"https://u:pw@r:8081\"", "schema_registry.url"),
            (
                "url = \"http://r:8081\"\nca_file = \"ca.pem\"",
                "schema_registry.ca_file",
            ),
            ("username = \"svc\"", "schema_registry.password"),
            ("password = \"pw\"", "schema_registry.username"),
            ("username = \"\"\npassword = \"pw\"", "schema_registry.username"),
            ("username = \"svc\"\npassword = \"\"", "schema_registry.password"),
            (
                "username = \"svc\"\npassword = \"pw\"\nbearer_token = \"t\"",
                "schema_registry.bearer_token",
            ),
            ("bearer_token = \"\"", "schema_registry.bearer_token"),
            ("timeout = \"0s\"", "schema_registry.timeout"),
            ("connect_timeout = \"0s\"", "schema_registry.connect_timeout"),
            (
                "negative_cache_ttl = \"10ms\"",
                "schema_registry.negative_cache_ttl",
            ),
        ] {
            let e = parse(&format!("[schema_registry]\n{text}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains(&format!("key `{key}`")), "{text}: {e}");
            // The URL's credentials are not echoed back.
            assert!(!e.contains("u:pw"), "{e}");
        }
        for ok in [
            "url = \"https://registry.internal:8081/\"\nca_file = \"ca.pem\"",
            "url = \"http://127.0.0.1:8081\"\nusername = \"svc\"\npassword = \"pw\"",
            "url = \"https://r\"\nbearer_token = \"t\"\ntimeout = \"2s\"\nnegative_cache_ttl = \"1m\"",
        ] {
            assert!(parse(&format!("[schema_registry]\n{ok}\n")).is_ok(), "{ok}");
        }
        let d = parse("").unwrap().schema_registry;
        assert_eq!(d.connect_timeout, Duration::from_secs(5));
        assert_eq!(d.timeout, Duration::from_secs(10));
        assert_eq!(d.negative_cache_ttl, Duration::from_secs(300));
    }

    #[test]
    fn schema_registry_secrets_come_from_the_environment_and_are_never_printed() {
        // SAFETY: this test alone uses these variable names; no other thread reads them.
        unsafe {
            std::env::set_var("CX_SENTINEL__SCHEMA_REGISTRY__USERNAME", "svc-env");
            std::env::set_var("CX_SENTINEL__SCHEMA_REGISTRY__PASSWORD", "hunter2-from-env");
        }
        let c = Config::from_toml_with_env(
            "[schema_registry]\nurl = \"https://r:8081\"\n",
            Path::new("t.toml"),
            true,
        );
        unsafe {
            std::env::remove_var("CX_SENTINEL__SCHEMA_REGISTRY__USERNAME");
            std::env::remove_var("CX_SENTINEL__SCHEMA_REGISTRY__PASSWORD");
        }
        let c = c.unwrap();
        assert_eq!(c.schema_registry.username.as_deref(), Some("svc-env"));
        assert_eq!(
            c.schema_registry.password.as_ref().map(Secret::expose),
            Some("hunter2-from-env")
        );
        assert!(!format!("{c:?}").contains("hunter2"));
        let c = parse("[schema_registry]\nurl = \"https://r\"\nbearer_token = \"tok-hunter3\"\n").unwrap();
        let text = format!("{c:?}");
        assert!(
            !text.contains("hunter3") && text.contains("bearer_token: Some(<redacted>)"),
            "{text}"
        );
    }

    #[test]
    fn env_overrides_file() {
        // SAFETY: this test alone uses this variable name; no other thread reads it.
        unsafe { std::env::set_var("CX_SENTINEL__KAFKA__GROUP_ID", "from-env") };
        let c = Config::from_toml_with_env("[kafka]\ngroup_id = \"from-file\"\n", Path::new("t.toml"), true);
        unsafe { std::env::remove_var("CX_SENTINEL__KAFKA__GROUP_ID") };
        assert_eq!(c.unwrap().kafka.group_id, "from-env");
    }

    #[test]
    fn globs() {
        assert!(glob_match("payment.*", "payment.transfer"));
        assert!(!glob_match("payment.*", "payments.transfer"));
        assert!(glob_match("order.delivery*", "order.delivery"));
        assert!(glob_match("order.delivery*", "order.delivery.late"));
        assert!(glob_match("ssn", "ssn"));
        assert!(!glob_match("ssn", "ssn2"));
        assert!(glob_match("*.menu", "ivr.menu"));
        assert!(glob_match("a*b*c", "aXbYc"));
        assert!(!glob_match("a*b*c", "aXcYb"));
        assert!(!glob_match("ab*ba", "aba"));
        assert!(glob_match("*", ""));
    }
}
