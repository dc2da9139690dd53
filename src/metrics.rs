//! Prometheus metrics: one registry, names as constants, low-cardinality labels only.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub const RECORDS_CONSUMED: &str = "cx_sentinel_records_consumed_total";
pub const DECODE_ERRORS: &str = "cx_sentinel_decode_errors_total";
pub const DEAD_LETTERS: &str = "cx_sentinel_dead_letters_total";
pub const LATE_RECORDS: &str = "cx_sentinel_late_records_total";
pub const FUTURE_RECORDS: &str = "cx_sentinel_future_records_total";
pub const ALERT_CORRECTIONS: &str = "cx_sentinel_alert_corrections_total";
pub const DUPLICATE_RECORDS: &str = "cx_sentinel_duplicate_records_total";
pub const ALERTS: &str = "cx_sentinel_alerts_total";
pub const PRODUCE_ERRORS: &str = "cx_sentinel_produce_errors_total";
pub const PROCESSING_SECONDS: &str = "cx_sentinel_processing_duration_seconds";
pub const END_TO_END_SECONDS: &str = "cx_sentinel_end_to_end_latency_seconds";
pub const CONSUMER_LAG: &str = "cx_sentinel_consumer_lag_records";
pub const CUSTOMERS: &str = "cx_sentinel_customers_in_state";
pub const STATE_BYTES: &str = "cx_sentinel_state_bytes";
pub const ALLOCATOR_BYTES: &str = "cx_sentinel_allocator_bytes";
pub const REBALANCES: &str = "cx_sentinel_rebalances_total";
pub const ASSIGNED_PARTITIONS: &str = "cx_sentinel_assigned_partitions";
pub const EVICTIONS: &str = "cx_sentinel_customers_evicted_total";
pub const CHANGELOG_RECORDS: &str = "cx_sentinel_state_changelog_records_total";
pub const RESTORED_RECORDS: &str = "cx_sentinel_state_restored_records_total";
pub const RESTORE_SECONDS: &str = "cx_sentinel_state_restore_duration_seconds";
pub const SHED: &str = "cx_sentinel_customers_shed_total";
pub const ALERTS_TRIMMED: &str = "cx_sentinel_alerts_trimmed_total";
pub const CASES: &str = "cx_sentinel_cases_total";
pub const TIME_TO_ACKNOWLEDGE: &str = "cx_sentinel_time_to_acknowledge_seconds";
pub const TIME_TO_RECOVER: &str = "cx_sentinel_time_to_recover_seconds";
pub const CASES_HELD: &str = "cx_sentinel_cases_held";
pub const TXN_ABORTS: &str = "cx_sentinel_transaction_aborts_total";
pub const TXN_COMMITS: &str = "cx_sentinel_transaction_commits_total";
pub const RESTORING: &str = "cx_sentinel_state_restoring_partitions";

/// Every metric the service exports, registered once in `registry`.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// Label: partition.
    pub records_consumed: IntCounterVec,
    /// Label: class (json, avro, framing, unknown_schema, validation).
    pub decode_errors: IntCounterVec,
    /// Label: reason (a decode class, `late` or `future`).
    pub dead_letters: IntCounterVec,
    pub late_records: IntCounter,
    pub future_records: IntCounter,
    /// Label: rule (of the case withdrawn). Published corrections (WITHDRAWN alerts).
    pub alert_corrections: IntCounterVec,
    pub duplicate_records: IntCounter,
    /// Labels: rule, severity, status.
    pub alerts: IntCounterVec,
    /// Label: topic kind (alert, dlq).
    pub produce_errors: IntCounterVec,
    pub processing_seconds: Histogram,
    /// Label: status. Event time of the alert to its acknowledgement by the broker.
    pub end_to_end_seconds: HistogramVec,
    /// Labels: status, rule, severity, queue. Case transitions published (acknowledged by the
    /// broker): opened, acknowledged, resolved, recovered, reopened, expired, ...
    pub cases: IntCounterVec,
    /// Labels: severity, queue. A case's (re)opening to its acknowledgement by an agent. (The
    /// rule of a lifecycle alert names the transition, not what opened the case: not a label.)
    pub time_to_acknowledge: HistogramVec,
    /// Labels: severity, queue, by (agent: RESOLVED; customer: RECOVERED).
    pub time_to_recover: HistogramVec,
    /// Labels: status, queue. Cases held in state now (recomputed with `state_bytes`).
    pub cases_held: IntGaugeVec,
    /// Label: partition.
    pub consumer_lag: IntGaugeVec,
    pub customers: IntGauge,
    pub state_bytes: IntGauge,
    /// Label: kind (allocated, active, resident, metadata): jemalloc's own counters.
    pub allocator_bytes: IntGaugeVec,
    /// Label: kind (assign, revoke).
    pub rebalances: IntCounterVec,
    pub assigned_partitions: IntGauge,
    pub evictions: IntCounter,
    /// State changelog records acknowledged by the broker (state write volume).
    pub changelog_records: IntCounter,
    /// Changelog records read while restoring (rate() gives records/s).
    pub restored_records: IntCounter,
    pub restore_seconds: Histogram,
    /// Partitions whose state is being restored now (not ready while above zero).
    pub restoring_partitions: IntGauge,
    /// exactly_once: transactions committed / aborted and recovered from (label: reason).
    pub txn_commits: IntCounter,
    /// Customers dropped because the instance held `state.max_customers`.
    pub shed: IntCounter,
    /// Alerts too large for the alert topic, sent again without recent touchpoints and attributes.
    pub alerts_trimmed: IntCounter,
    pub txn_aborts: IntCounterVec,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            r.register(Box::new(c.clone())).expect("metric names are unique");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        // Human response times: a minute to three days (the reopen window).
        let case_buckets = vec![
            60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0, 86400.0, 259200.0,
        ];
        // Fine between 10 and 100 ms, where an alerting SLO sits (the benchmark's target is a p99
        // of 50 ms): a quantile read from these buckets is off by at most one bucket's width.
        let latency_buckets = vec![
            0.001, 0.002, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.045, 0.05, 0.06, 0.07, 0.08,
            0.09, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
        ];
        let metrics = Self {
            records_consumed: counter_vec(RECORDS_CONSUMED, "Input records consumed.", &["partition"]),
            decode_errors: counter_vec(
                DECODE_ERRORS,
                "Input records that failed decoding or validation.",
                &["class"],
            ),
            dead_letters: counter_vec(
                DEAD_LETTERS,
                "Records written to the dead-letter topic.",
                &["reason"],
            ),
            late_records: reg(
                &registry,
                IntCounter::new(
                    LATE_RECORDS,
                    "Touchpoints behind the watermark (dead-lettered, not applied).",
                )
                .expect("valid metric"),
            ),
            future_records: reg(
                &registry,
                IntCounter::new(
                    FUTURE_RECORDS,
                    "Touchpoints stamped further ahead of their record's timestamp than engine.max_clock_skew (dead-lettered, not applied).",
                )
                .expect("valid metric"),
            ),
            alert_corrections: counter_vec(
                ALERT_CORRECTIONS,
                "Corrections published: a late touchpoint showed an open case should never have opened (WITHDRAWN).",
                &["rule"],
            ),
            duplicate_records: reg(
                &registry,
                IntCounter::new(
                    DUPLICATE_RECORDS,
                    "Touchpoints whose event id was already applied.",
                )
                .expect("valid metric"),
            ),
            alerts: counter_vec(
                ALERTS,
                "Recovery alerts acknowledged by the broker.",
                &["rule", "severity", "status"],
            ),
            produce_errors: counter_vec(PRODUCE_ERRORS, "Failed deliveries (retried).", &["topic"]),
            processing_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(PROCESSING_SECONDS, "Time to decode and process one input record.")
                        .buckets(vec![
                            1e-6, 2e-6, 5e-6, 1e-5, 2e-5, 5e-5, 1e-4, 2e-4, 5e-4, 1e-3, 5e-3, 0.01, 0.1,
                        ]),
                )
                .expect("valid metric"),
            ),
            end_to_end_seconds: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        END_TO_END_SECONDS,
                        "Event time of an alert to its acknowledgement by the broker.",
                    )
                    .buckets(latency_buckets),
                    &["status"],
                )
                .expect("valid metric"),
            ),
            cases: counter_vec(
                CASES,
                "Case transitions published, by status (OPEN, ACKNOWLEDGED, RESOLVED, RECOVERED, REOPENED, ...).",
                &["status", "rule", "severity", "queue"],
            ),
            time_to_acknowledge: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        TIME_TO_ACKNOWLEDGE,
                        "From a case's (re)opening to an agent's acknowledgement (event time).",
                    )
                    .buckets(case_buckets.clone()),
                    &["severity", "queue"],
                )
                .expect("valid metric"),
            ),
            time_to_recover: reg(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        TIME_TO_RECOVER,
                        "From a case's (re)opening to its resolution by an agent or recovery by the customer (event time).",
                    )
                    .buckets(case_buckets),
                    &["severity", "queue", "by"],
                )
                .expect("valid metric"),
            ),
            cases_held: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        CASES_HELD,
                        "Cases held on this instance by status: OPEN and REOPENED wait for an agent, ACKNOWLEDGED are being worked, RESOLVED are watched for engine.reopen_window (recomputed at most every 10 s).",
                    ),
                    &["status", "queue"],
                )
                .expect("valid metric"),
            ),
            consumer_lag: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        CONSUMER_LAG,
                        "Records behind the partition's high watermark (librdkafka statistics).",
                    ),
                    &["partition"],
                )
                .expect("valid metric"),
            ),
            customers: reg(
                &registry,
                IntGauge::new(CUSTOMERS, "Customers held in state on this instance.").expect("valid metric"),
            ),
            state_bytes: reg(
                &registry,
                IntGauge::new(
                    STATE_BYTES,
                    "Estimated bytes of customer state on this instance (recomputed at most every 10 s).",
                )
                .expect("valid metric"),
            ),
            allocator_bytes: reg(
                &registry,
                IntGaugeVec::new(
                    Opts::new(
                        ALLOCATOR_BYTES,
                        "The allocator's own counters (jemalloc stats.*), read at each scrape: allocated = held by the program, active = pages those allocations occupy, resident = the allocator's memory in RAM.",
                    ),
                    &["kind"],
                )
                .expect("valid metric"),
            ),
            rebalances: counter_vec(REBALANCES, "Consumer group rebalances seen.", &["kind"]),
            assigned_partitions: reg(
                &registry,
                IntGauge::new(ASSIGNED_PARTITIONS, "Input partitions assigned to this instance.")
                    .expect("valid metric"),
            ),
            evictions: reg(
                &registry,
                IntCounter::new(EVICTIONS, "Customers evicted after the idle TTL.").expect("valid metric"),
            ),
            restored_records: reg(
                &registry,
                IntCounter::new(RESTORED_RECORDS, "Changelog records read while restoring state.")
                    .expect("valid metric"),
            ),
            restore_seconds: reg(
                &registry,
                Histogram::with_opts(
                    HistogramOpts::new(RESTORE_SECONDS, "Time to restore one partition's state.")
                        .buckets(vec![0.01, 0.1, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0]),
                )
                .expect("valid metric"),
            ),
            restoring_partitions: reg(
                &registry,
                IntGauge::new(RESTORING, "Partitions whose state is being restored.").expect("valid metric"),
            ),
            changelog_records: reg(
                &registry,
                IntCounter::new(
                    CHANGELOG_RECORDS,
                    "State changelog records (snapshots and tombstones) acknowledged by the broker.",
                )
                .expect("valid metric"),
            ),
            shed: reg(
                &registry,
                IntCounter::new(SHED, "Customers dropped at the state.max_customers cap.")
                    .expect("valid metric"),
            ),
            alerts_trimmed: reg(
                &registry,
                IntCounter::new(
                    ALERTS_TRIMMED,
                    "Alerts too large for the alert topic, sent again without recent touchpoints and attributes.",
                )
                .expect("valid metric"),
            ),
            txn_commits: reg(
                &registry,
                IntCounter::new(TXN_COMMITS, "Transactions committed (exactly_once).").expect("valid metric"),
            ),
            txn_aborts: counter_vec(
                TXN_ABORTS,
                "Transactions aborted and recovered from (exactly_once).",
                &["reason"],
            ),
            registry,
        };
        // The rules a correction can withdraw, at 0: alerting on a rate needs the series to exist.
        for rule in ["high_effort", "channel_hopping"] {
            metrics.alert_corrections.with_label_values(&[rule]);
        }
        metrics
    }

    /// The registry in Prometheus text exposition format.
    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("prometheus text is UTF-8")
    }
}
