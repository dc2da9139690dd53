//! Process measurements: wall clock, CPU time from /proc, resident memory, per-thread CPU, and the
//! optional `perf record` of a phase.

use crate::Args;
use anyhow::{Context, Result};
use serde_json::{Value, json};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};

/// Reads this process's (and optionally the broker's) CPU time.
#[derive(Clone)]
pub(crate) struct Probe {
    ticks_per_s: f64,
    broker_pid: Option<u32>,
}

/// A point in time with the CPU seconds used so far.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Snap {
    pub(crate) at: Instant,
    pub(crate) cpu: f64,
    broker_cpu: Option<f64>,
    /// CPU seconds the hypervisor gave to other guests while this machine had work (all CPUs,
    /// `steal` of `/proc/stat`): a shared host's noise, reported so a slow run can be told from
    /// a slow program.
    stolen: Option<f64>,
}

impl Probe {
    pub(crate) fn new(broker_pid: Option<u32>) -> Result<Self> {
        let ticks_per_s = std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse::<f64>().ok())
            .unwrap_or(100.0);
        let probe = Self {
            ticks_per_s,
            broker_pid,
        };
        probe
            .snap()
            .context("reading /proc/self/stat (the benchmark needs Linux /proc)")?;
        if let Some(pid) = broker_pid
            && probe.cpu_of(&format!("/proc/{pid}/stat")).is_err()
        {
            eprintln!("e2e_bench: cannot read /proc/{pid}/stat; broker CPU will not be reported");
        }
        Ok(probe)
    }

    /// utime + stime (fields 14 and 15 of `/proc/<pid>/stat`) in seconds, all threads.
    fn cpu_of(&self, path: &str) -> Result<f64> {
        let stat = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
        Ok(stat_ticks(&stat).with_context(|| format!("parsing {path}"))? as f64 / self.ticks_per_s)
    }

    pub(crate) fn snap(&self) -> Result<Snap> {
        Ok(Snap {
            at: Instant::now(),
            cpu: self.cpu_of("/proc/self/stat")?,
            broker_cpu: self
                .broker_pid
                .and_then(|pid| self.cpu_of(&format!("/proc/{pid}/stat")).ok()),
            stolen: self.stolen(),
        })
    }

    /// The `steal` column of the `cpu` line of `/proc/stat`, in seconds.
    fn stolen(&self) -> Option<f64> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let ticks: u64 = stat.lines().next()?.split_whitespace().nth(8)?.parse().ok()?;
        Some(ticks as f64 / self.ticks_per_s)
    }

    /// CPU seconds per thread kind (`tokio-rt-worker`, `rdk:broker`, ...) between two snapshots.
    pub(crate) fn by_thread(&self, before: &Threads, after: &Threads) -> BTreeMap<String, f64> {
        let mut out = BTreeMap::new();
        for (tid, (name, ticks)) in after {
            let start = before.get(tid).map_or(0, |(_, t)| *t);
            let kind = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '/');
            *out.entry(kind.to_string()).or_insert(0.0) +=
                ticks.saturating_sub(start) as f64 / self.ticks_per_s;
        }
        out.retain(|_, v| *v > 0.0);
        out
    }
}

/// utime + stime in clock ticks from the text of a `stat` file.
fn stat_ticks(stat: &str) -> Result<u64> {
    // The command name (field 2) is in parentheses and may contain spaces.
    let rest = &stat[stat.rfind(')').context("no ')' in stat")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let field = |i: usize| -> Result<u64> {
        fields
            .get(i)
            .context("stat too short")?
            .parse::<u64>()
            .context("not a number")
    };
    Ok(field(11)? + field(12)?)
}

/// Thread id → (name, CPU ticks) of every thread of this process.
pub(crate) type Threads = BTreeMap<u32, (String, u64)>;

pub(crate) fn threads() -> Threads {
    let mut out = Threads::new();
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return out;
    };
    for entry in dir.flatten() {
        let Some(tid) = entry.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        let name = match (stat.find('('), stat.rfind(')')) {
            (Some(a), Some(b)) if a < b => stat[a + 1..b].to_string(),
            _ => continue,
        };
        if let Ok(ticks) = stat_ticks(&stat) {
            out.insert(tid, (name, ticks));
        }
    }
    out
}

/// VmRSS of this process in bytes.
pub(crate) fn rss_bytes() -> Result<u64> {
    let status = std::fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS in /proc/self/status")?;
    let kb: u64 = line
        .split_whitespace()
        .nth(1)
        .context("VmRSS has no value")?
        .parse()
        .context("VmRSS is not a number")?;
    Ok(kb * 1024)
}

/// Returns freed heap pages to the OS so resident memory counts live data, not what earlier
/// phases freed (or what a later phase could reuse without growing). The process allocator is
/// jemalloc; glibc's heap is trimmed too, for whatever still allocates from it.
pub(crate) fn trim_heap() {
    cx_sentinel::allocator::purge();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        unsafe extern "C" {
            fn malloc_trim(pad: usize) -> std::ffi::c_int;
        }
        // SAFETY: glibc's `malloc_trim` takes the arena locks itself and only releases free
        // memory.
        unsafe {
            malloc_trim(0);
        }
    }
}

/// Events, wall time and CPU time over one measured interval.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    events: u64,
    pub(crate) wall: f64,
    pub(crate) cpu: f64,
    broker_cpu: Option<f64>,
    stolen: Option<f64>,
}

impl Window {
    pub(crate) fn between(a: &Snap, b: &Snap, events: u64) -> Self {
        Self {
            events,
            wall: b.at.duration_since(a.at).as_secs_f64(),
            cpu: b.cpu - a.cpu,
            broker_cpu: a.broker_cpu.zip(b.broker_cpu).map(|(a, b)| b - a),
            stolen: a.stolen.zip(b.stolen).map(|(a, b)| b - a),
        }
    }

    /// Share of the machine's CPU time stolen by the hypervisor over the window.
    pub(crate) fn steal_share(&self) -> Option<f64> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
        self.stolen.map(|s| s / (self.wall.max(1e-9) * cores))
    }

    pub(crate) fn events_per_s(&self) -> f64 {
        self.events as f64 / self.wall.max(1e-9)
    }

    pub(crate) fn cpu_us_per_event(&self) -> f64 {
        self.cpu * 1e6 / self.events.max(1) as f64
    }

    pub(crate) fn broker_cpu_us_per_event(&self) -> Option<f64> {
        self.broker_cpu.map(|c| c * 1e6 / self.events.max(1) as f64)
    }

    pub(crate) fn json(&self) -> Value {
        json!({
            "events": self.events,
            "wall_s": self.wall,
            "cpu_s": self.cpu,
            "events_per_s": self.events_per_s(),
            "cpu_us_per_event": self.cpu_us_per_event(),
            "cores_used": self.cpu / self.wall.max(1e-9),
            "broker_cpu_us_per_event": self.broker_cpu_us_per_event(),
            "steal_share": self.steal_share(),
        })
    }
}

/// Optional `perf record` attached to this process for one phase.
pub(crate) struct Perf(Option<std::process::Child>);

impl Perf {
    pub(crate) fn start(args: &Args, phase: &str) -> Result<Self> {
        if !args.perf {
            return Ok(Self(None));
        }
        let dir = args.out.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        let out = dir.join(format!("perf-{phase}.data"));
        let child = std::process::Command::new("perf")
            .args([
                "record",
                "-e",
                "cpu-clock",
                "-F",
                "499",
                "--call-graph",
                "dwarf,16384",
                "-p",
            ])
            .arg(std::process::id().to_string())
            .arg("-o")
            .arg(&out)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .context("starting perf (install linux-perf, or drop --perf)")?;
        // Let it attach before the phase starts.
        std::thread::sleep(Duration::from_millis(700));
        eprintln!("      perf recording into {}", out.display());
        Ok(Self(Some(child)))
    }

    pub(crate) fn stop(self) {
        if let Some(mut child) = self.0 {
            let _ = std::process::Command::new("kill")
                .args(["-INT", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}
