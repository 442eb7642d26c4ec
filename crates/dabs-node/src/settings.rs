//! Settings that can change while the farm runs (R-RE-3): latency limits, the failover and
//! connection thresholds of clients without a configured class, and per-application records. A change is validated, numbered, stored, and spreads to every node: announcements
//! carry the settings version, and a node that hears a newer one fetches it (`SETTINGS`).

use crate::config::{AppConfig, NodeConfig};
use crate::policy::{Policy, UnknownPolicy};
use crate::zones::Thresholds;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// The farm's run-time settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Settings {
    /// Increases with every change; the farm converges on the highest (ties: `changed_by`).
    pub version: u64,
    /// The node where the last change was made.
    pub changed_by: String,
    /// High-water mark of message latency, ms: above it a server takes no new clients.
    pub max_message_latency_ms: u64,
    /// Low-water mark, ms: below it the server takes new clients again.
    pub low_water_ms: u64,
    /// Health at or below which a server defers its clients (R-FO-2), 0..=100; clients of a
    /// configured class keep their class's thresholds.
    #[serde(default = "default_failover")]
    pub failover_threshold: u8,
    /// Health above which a server admits new clients, 0..=100.
    #[serde(default = "default_connection")]
    pub connection_threshold: u8,
    /// Health above which deferred clients are called back and admitted again, 0..=100.
    #[serde(default = "default_return")]
    pub return_threshold: u8,
    /// A portion without clients this long is retired, ms; 0: never (`[balance]
    /// retire_idle_after_ms`). Settings from a node that predates it take the default.
    #[serde(default = "default_retire")]
    pub retire_idle_after_ms: u64,
    /// Per-application records.
    pub apps: BTreeMap<String, AppSettings>,
}

fn default_retire() -> u64 {
    crate::config::BalanceConfig::default().retire_idle_after.as_millis() as u64
}

fn default_failover() -> u8 {
    Thresholds::default().failover
}

fn default_connection() -> u8 {
    Thresholds::default().connection
}

fn default_return() -> u8 {
    Thresholds::default().returning
}

/// The run-time part of an application's record.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AppSettings {
    /// Servers allowed to run it (empty: all).
    pub subgroup: Vec<String>,
    /// Sessions that fill a portion.
    pub max_sessions_per_portion: u64,
    /// A server with less free memory (MiB) is not eligible.
    pub min_free_memory_mb: u64,
    /// A server busier than this (percent) is not eligible.
    pub max_cpu_percent: f64,
    /// The policy that picks its preferred server. Settings from a node that predates it
    /// take the default.
    #[serde(default)]
    pub policy: Policy,
    /// How often its status objects are read, ms.
    #[serde(default = "default_collect")]
    pub collect_interval_ms: u64,
}

fn default_collect() -> u64 {
    crate::config::DEFAULT_COLLECT_INTERVAL.as_millis() as u64
}

/// A change: any subset of the fields.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SettingsPatch {
    /// New high-water mark, ms.
    #[serde(default)]
    pub max_message_latency_ms: Option<u64>,
    /// New low-water mark, ms.
    #[serde(default)]
    pub low_water_ms: Option<u64>,
    /// New failover threshold (health, 0..=100).
    #[serde(default)]
    pub failover_threshold: Option<u64>,
    /// New connection threshold (health, 0..=100).
    #[serde(default)]
    pub connection_threshold: Option<u64>,
    /// New return threshold (health, 0..=100).
    #[serde(default)]
    pub return_threshold: Option<u64>,
    /// New idle time before a portion is retired, ms (0: never).
    #[serde(default)]
    pub retire_idle_after_ms: Option<u64>,
    /// Per-application changes.
    #[serde(default)]
    pub apps: BTreeMap<String, AppPatch>,
}

/// A change to one application's record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AppPatch {
    /// New sub-group.
    #[serde(default)]
    pub subgroup: Option<Vec<String>>,
    /// New portion size.
    #[serde(default)]
    pub max_sessions_per_portion: Option<u64>,
    /// New memory minimum.
    #[serde(default)]
    pub min_free_memory_mb: Option<u64>,
    /// New CPU ceiling.
    #[serde(default)]
    pub max_cpu_percent: Option<f64>,
    /// New policy, by name (`least_loaded`, ..., `app_figure:FIGURE`).
    #[serde(default)]
    pub policy: Option<String>,
    /// New collection interval of its status objects, ms.
    #[serde(default)]
    pub collect_interval_ms: Option<u64>,
}

/// A change that was refused: which field, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{field}: {message}")]
pub struct SettingsError {
    /// The field, as a path (`apps.calc.max_cpu_percent`).
    pub field: String,
    /// What is wrong and what is expected.
    pub message: String,
}

/// The highest settings version a node takes or makes. Every change adds one, so no farm
/// reaches it (four billion changes); a version beyond it is not a newer change but an attempt
/// to make every later one look older (or to wrap the counter), and is refused wherever it
/// comes from: a fetch, the database, or a change made here.
pub const MAX_SETTINGS_VERSION: u64 = 1 << 32;

fn threshold_out_of_range(field: &str, v: u64) -> SettingsError {
    refuse(field, format!("{v} is out of range 0..100 (a health score)"))
}

fn refuse(field: impl Into<String>, message: impl Into<String>) -> SettingsError {
    SettingsError { field: field.into(), message: message.into() }
}

/// How one field of an application's record is shown in a change event.
type ShowApp = fn(&AppSettings) -> String;

impl Settings {
    /// The settings a configuration file starts with (version 0).
    pub fn from_config(config: &NodeConfig) -> Self {
        Self {
            version: 0,
            changed_by: String::new(),
            max_message_latency_ms: config.latency.max_message_latency.as_millis() as u64,
            low_water_ms: config.latency.low_water.as_millis() as u64,
            failover_threshold: config.failover.thresholds.failover,
            connection_threshold: config.failover.thresholds.connection,
            return_threshold: config.failover.thresholds.returning,
            retire_idle_after_ms: config.balance.retire_idle_after.as_millis() as u64,
            apps: config
                .apps
                .iter()
                .map(|a| {
                    (
                        a.name.clone(),
                        AppSettings {
                            subgroup: a.subgroup.clone(),
                            max_sessions_per_portion: a.max_sessions_per_portion,
                            min_free_memory_mb: a.min_free_memory_mb,
                            max_cpu_percent: a.max_cpu_percent,
                            policy: a.policy.clone(),
                            collect_interval_ms: a.collect_interval.as_millis() as u64,
                        },
                    )
                })
                .collect(),
        }
    }

    /// True when these settings should replace `other`.
    pub fn newer_than(&self, other: &Settings) -> bool {
        (self.version, &self.changed_by) > (other.version, &other.changed_by)
    }

    /// The settings after `patch`, made at node `by`, or the first thing wrong with it.
    pub fn apply(&self, patch: &SettingsPatch, by: &str) -> Result<Settings, SettingsError> {
        let mut next = self.clone();
        if let Some(v) = patch.max_message_latency_ms {
            next.max_message_latency_ms = v;
        }
        if let Some(v) = patch.low_water_ms {
            next.low_water_ms = v;
        }
        next.check_latency()?;
        if let Some(v) = patch.retire_idle_after_ms {
            next.retire_idle_after_ms = v;
        }
        // Any arrangement of failover and connection is allowed (R-FO-2 has three).
        for (value, field, slot) in [
            (patch.failover_threshold, "failover_threshold", &mut next.failover_threshold),
            (patch.connection_threshold, "connection_threshold", &mut next.connection_threshold),
            (patch.return_threshold, "return_threshold", &mut next.return_threshold),
        ] {
            if let Some(v) = value {
                *slot = u8::try_from(v).map_err(|_| threshold_out_of_range(field, v))?;
            }
        }
        for (name, p) in &patch.apps {
            let Some(app) = next.apps.get_mut(name) else {
                return Err(refuse(format!("apps.{name}"), "no such application in this farm"));
            };
            if let Some(g) = &p.subgroup {
                app.subgroup = g.clone();
            }
            if let Some(v) = p.max_sessions_per_portion {
                app.max_sessions_per_portion = v;
            }
            if let Some(v) = p.min_free_memory_mb {
                app.min_free_memory_mb = v;
            }
            if let Some(v) = p.max_cpu_percent {
                app.max_cpu_percent = v;
            }
            if let Some(v) = &p.policy {
                app.policy = v
                    .parse()
                    .map_err(|e: UnknownPolicy| refuse(format!("apps.{name}.policy"), e.to_string()))?;
            }
            if let Some(v) = p.collect_interval_ms {
                app.collect_interval_ms = v;
            }
        }
        next.validate()?;
        next.version =
            self.version.checked_add(1).filter(|v| *v <= MAX_SETTINGS_VERSION).ok_or_else(|| {
                refuse(
                    "version",
                    format!("version {} cannot grow further (limit {MAX_SETTINGS_VERSION})", self.version),
                )
            })?;
        next.changed_by = by.to_owned();
        Ok(next)
    }

    /// Checks every value as a change made here is checked (the operator's PUT goes through
    /// [`Settings::apply`], which ends here), and the version against
    /// [`MAX_SETTINGS_VERSION`]: settings fetched from another node or read from the database
    /// are taken only when this passes.
    pub fn validate(&self) -> Result<(), SettingsError> {
        if self.version > MAX_SETTINGS_VERSION {
            return Err(refuse(
                "version",
                format!("{} is beyond the highest settings version ({MAX_SETTINGS_VERSION})", self.version),
            ));
        }
        self.check_latency()?;
        let (lo, hi) = crate::config::RETIRE_IDLE_RANGE_MS;
        if !(lo..=hi).contains(&self.retire_idle_after_ms) {
            return Err(refuse(
                "retire_idle_after_ms",
                format!("{} is out of range {lo}..{hi} (0: never)", self.retire_idle_after_ms),
            ));
        }
        for (value, field) in [
            (self.failover_threshold, "failover_threshold"),
            (self.connection_threshold, "connection_threshold"),
            (self.return_threshold, "return_threshold"),
        ] {
            if value > 100 {
                return Err(threshold_out_of_range(field, value.into()));
            }
        }
        for (name, app) in &self.apps {
            let field = |f: &str| format!("apps.{name}.{f}");
            let g = &app.subgroup;
            for (i, n) in g.iter().enumerate() {
                if n.is_empty() || !n.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
                    return Err(refuse(
                        field("subgroup"),
                        format!("{n:?} is not a node name ([A-Za-z0-9_-]+)"),
                    ));
                }
                if g[..i].contains(n) {
                    return Err(refuse(field("subgroup"), format!("{n} is listed twice")));
                }
            }
            let v = app.max_sessions_per_portion;
            if !(1..=1_000_000).contains(&v) {
                return Err(refuse(
                    field("max_sessions_per_portion"),
                    format!("{v} is out of range 1..1000000"),
                ));
            }
            let v = app.max_cpu_percent;
            if !(v > 0.0 && v <= 100.0) {
                return Err(refuse(field("max_cpu_percent"), format!("{v} is out of range (0, 100]")));
            }
            let (lo, hi) = crate::config::COLLECT_INTERVAL_RANGE_MS;
            let v = app.collect_interval_ms;
            if !(lo..=hi).contains(&v) {
                return Err(refuse(field("collect_interval_ms"), format!("{v} is out of range {lo}..{hi}")));
            }
        }
        Ok(())
    }

    fn check_latency(&self) -> Result<(), SettingsError> {
        let next = self;
        if !(1..=600_000).contains(&next.max_message_latency_ms) {
            return Err(refuse(
                "max_message_latency_ms",
                format!("{} is out of range 1..600000", next.max_message_latency_ms),
            ));
        }
        if next.low_water_ms >= next.max_message_latency_ms {
            return Err(refuse(
                "low_water_ms",
                format!(
                    "{} must be below max_message_latency_ms ({})",
                    next.low_water_ms, next.max_message_latency_ms
                ),
            ));
        }
        Ok(())
    }

    /// What differs from `before`, one `field old → new` each (fields named as in a change:
    /// `failover_threshold`, `apps.calc.max_cpu_percent`), for the events.
    pub fn changes_from(&self, before: &Settings) -> Vec<String> {
        let mut out = Vec::new();
        let mut field = |name: String, old: String, new: String| {
            if old != new {
                out.push(format!("{name} {old} → {new}"));
            }
        };
        for (name, old, new) in [
            ("max_message_latency_ms", before.max_message_latency_ms, self.max_message_latency_ms),
            ("low_water_ms", before.low_water_ms, self.low_water_ms),
            ("failover_threshold", before.failover_threshold.into(), self.failover_threshold.into()),
            ("connection_threshold", before.connection_threshold.into(), self.connection_threshold.into()),
            ("return_threshold", before.return_threshold.into(), self.return_threshold.into()),
        ] {
            field(name.to_owned(), old.to_string(), new.to_string());
        }
        let apps: std::collections::BTreeSet<&String> = before.apps.keys().chain(self.apps.keys()).collect();
        let shown = |a: Option<&AppSettings>, f: fn(&AppSettings) -> String| a.map_or("none".to_owned(), f);
        for app in apps {
            let (old, new) = (before.apps.get(app), self.apps.get(app));
            let parts: [(&str, ShowApp); 6] = [
                ("subgroup", |a| format!("[{}]", a.subgroup.join(", "))),
                ("max_sessions_per_portion", |a| a.max_sessions_per_portion.to_string()),
                ("min_free_memory_mb", |a| a.min_free_memory_mb.to_string()),
                ("max_cpu_percent", |a| a.max_cpu_percent.to_string()),
                ("policy", |a| a.policy.to_string()),
                ("collect_interval_ms", |a| a.collect_interval_ms.to_string()),
            ];
            for (key, show) in parts {
                field(format!("apps.{app}.{key}"), shown(old, show), shown(new, show));
            }
        }
        out
    }

    /// The event line of these settings replacing `before`: its version, where it was made
    /// and what changed (`settings v2 from node-1: failover_threshold 10 → 20`).
    pub fn change_event(&self, before: &Settings, how: &str) -> String {
        let changes = self.changes_from(before);
        let what = if changes.is_empty() { "nothing changed".to_owned() } else { changes.join(", ") };
        format!("settings v{} {how}: {what}", self.version)
    }

    /// The thresholds of clients without a configured class.
    pub fn thresholds(&self) -> Thresholds {
        Thresholds {
            failover: self.failover_threshold,
            connection: self.connection_threshold,
            returning: self.return_threshold,
        }
    }

    /// An application's record with the run-time settings applied.
    pub fn app_config(&self, base: &AppConfig) -> AppConfig {
        let mut a = base.clone();
        if let Some(s) = self.apps.get(&base.name) {
            a.subgroup = s.subgroup.clone();
            a.max_sessions_per_portion = s.max_sessions_per_portion;
            a.min_free_memory_mb = s.min_free_memory_mb;
            a.max_cpu_percent = s.max_cpu_percent;
            a.policy = s.policy.clone();
            a.collect_interval = std::time::Duration::from_millis(s.collect_interval_ms);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        let text = include_str!("../../../docs/node.example.toml");
        Settings::from_config(&NodeConfig::parse(text, std::path::Path::new("x.toml")).unwrap())
    }

    #[test]
    fn valid_changes_bump_the_version() {
        let s = base();
        let patch = SettingsPatch {
            max_message_latency_ms: Some(300),
            apps: BTreeMap::from([(
                "calc".into(),
                AppPatch { max_cpu_percent: Some(80.0), ..Default::default() },
            )]),
            ..Default::default()
        };
        let next = s.apply(&patch, "node-2").unwrap();
        assert_eq!((next.version, next.changed_by.as_str(), next.max_message_latency_ms), (1, "node-2", 300));
        assert_eq!(next.apps["calc"].max_cpu_percent, 80.0);
        assert!(next.newer_than(&s) && !s.newer_than(&next));
    }

    #[test]
    fn the_idle_time_before_retirement_changes_live_within_its_range() {
        let s = base();
        assert_eq!(s.retire_idle_after_ms, 60_000, "the example's (and default) value");
        let patch = SettingsPatch { retire_idle_after_ms: Some(1_500), ..Default::default() };
        assert_eq!(s.apply(&patch, "n").unwrap().retire_idle_after_ms, 1_500);
        let off = SettingsPatch { retire_idle_after_ms: Some(0), ..Default::default() };
        assert_eq!(s.apply(&off, "n").unwrap().retire_idle_after_ms, 0, "0 turns retirement off");
        let far = SettingsPatch { retire_idle_after_ms: Some(86_400_001), ..Default::default() };
        let e = s.apply(&far, "n").unwrap_err();
        assert_eq!(e.field, "retire_idle_after_ms", "{e}");
        // Settings stored or fetched from a node without the field take the default.
        let mut old = serde_json::to_value(&s).unwrap();
        old.as_object_mut().unwrap().remove("retire_idle_after_ms");
        let read: Settings = serde_json::from_value(old).unwrap();
        assert_eq!(read.retire_idle_after_ms, 60_000);
    }

    #[test]
    fn a_change_says_which_fields_went_from_what_to_what() {
        let s = base();
        let patch = SettingsPatch {
            failover_threshold: Some(u64::from(s.failover_threshold) + 5),
            apps: BTreeMap::from([(
                "calc".into(),
                AppPatch {
                    max_cpu_percent: Some(80.5),
                    subgroup: Some(vec!["a".into(), "b".into()]),
                    ..Default::default()
                },
            )]),
            ..Default::default()
        };
        let next = s.apply(&patch, "node-2").unwrap();
        let old = &s.apps["calc"];
        assert_eq!(
            next.changes_from(&s),
            vec![
                format!("failover_threshold {} → {}", s.failover_threshold, s.failover_threshold + 5),
                format!("apps.calc.subgroup [{}] → [a, b]", old.subgroup.join(", ")),
                format!("apps.calc.max_cpu_percent {} → 80.5", old.max_cpu_percent),
            ]
        );
        assert!(next.change_event(&s, "made here").starts_with("settings v1 made here: failover_threshold "));
        assert_eq!(s.change_event(&s, "from x"), "settings v0 from x: nothing changed");
    }

    #[test]
    fn thresholds_change_in_any_arrangement_within_0_to_100() {
        let s = base();
        let patch = SettingsPatch {
            failover_threshold: Some(60),
            connection_threshold: Some(30),
            return_threshold: Some(80),
            ..Default::default()
        };
        let next = s.apply(&patch, "node-2").unwrap();
        assert_eq!(next.thresholds(), Thresholds { failover: 60, connection: 30, returning: 80 });
        assert_eq!(next.version, s.version + 1);
        for field in ["failover_threshold", "connection_threshold", "return_threshold"] {
            let mut bad = SettingsPatch::default();
            *match field {
                "failover_threshold" => &mut bad.failover_threshold,
                "connection_threshold" => &mut bad.connection_threshold,
                _ => &mut bad.return_threshold,
            } = Some(101);
            let e = s.apply(&bad, "n").unwrap_err();
            assert_eq!(e.field, field);
            assert!(e.message.contains("0..100"), "{e}");
        }
        // Settings stored before the thresholds were run-time ones still load.
        let old = serde_json::json!({"version": 3, "changed_by": "n", "max_message_latency_ms": 200,
            "low_water_ms": 100, "apps": {}});
        let old: Settings = serde_json::from_value(old).unwrap();
        assert_eq!(old.thresholds(), Thresholds::default());
    }

    #[test]
    fn bad_values_name_the_field() {
        let s = base();
        let e =
            s.apply(&SettingsPatch { low_water_ms: Some(10_000), ..Default::default() }, "n").unwrap_err();
        assert_eq!(e.field, "low_water_ms");
        let e = s
            .apply(
                &SettingsPatch {
                    apps: BTreeMap::from([("nope".into(), AppPatch::default())]),
                    ..Default::default()
                },
                "n",
            )
            .unwrap_err();
        assert_eq!(e.field, "apps.nope");
        let e = s
            .apply(
                &SettingsPatch {
                    apps: BTreeMap::from([(
                        "calc".into(),
                        AppPatch { max_cpu_percent: Some(0.0), ..Default::default() },
                    )]),
                    ..Default::default()
                },
                "n",
            )
            .unwrap_err();
        assert_eq!(e.field, "apps.calc.max_cpu_percent");
        assert!(
            serde_json::from_str::<SettingsPatch>(r#"{"max_latency": 3}"#).is_err(),
            "unknown keys refused"
        );
    }

    #[test]
    fn versions_cannot_wrap_and_foreign_settings_are_checked_like_a_change() {
        let s = base();
        assert_eq!(s.validate(), Ok(()));
        let mut top = s.clone();
        top.version = MAX_SETTINGS_VERSION;
        assert_eq!(top.validate(), Ok(()));
        let e = top.apply(&SettingsPatch::default(), "n").unwrap_err();
        assert_eq!(e.field, "version");
        for v in [MAX_SETTINGS_VERSION + 1, u64::MAX] {
            let huge = Settings { version: v, ..s.clone() };
            assert_eq!(huge.validate().unwrap_err().field, "version", "{v}");
            assert_eq!(huge.apply(&SettingsPatch::default(), "n").unwrap_err().field, "version");
        }
        for (field, bad) in [
            ("max_message_latency_ms", Settings { max_message_latency_ms: 0, ..s.clone() }),
            ("low_water_ms", Settings { low_water_ms: 10_000_000, ..s.clone() }),
            ("return_threshold", Settings { return_threshold: 200, ..s.clone() }),
        ] {
            assert_eq!(bad.validate().unwrap_err().field, field);
        }
        let mut bad = s.clone();
        bad.apps.get_mut("calc").unwrap().max_sessions_per_portion = 0;
        assert_eq!(bad.validate().unwrap_err().field, "apps.calc.max_sessions_per_portion");
        bad = s.clone();
        bad.apps.get_mut("calc").unwrap().subgroup = vec!["a b".into()];
        assert_eq!(bad.validate().unwrap_err().field, "apps.calc.subgroup");
    }
}
