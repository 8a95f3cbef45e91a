//! The node identity settings: `identity` (key file, pinned fingerprints, revoked keys) and
//! `secretPrevious` (the old mesh secret during a rotation). All optional: a 0.1.8 config has
//! none of them and means "key at `<stateDir>/node.key`, trust on first use, nothing revoked,
//! one secret".
//!
//! ```json
//! "secretPrevious": "the-old-mesh-secret",
//! "identity": {
//!   "keyFile": "/path/node.key",
//!   "pins": { "cloud-01": "ed25519:3f2a9c0d5e6b7a8f1e2d3c4b5a697887" },
//!   "revoked": ["ed25519:00112233445566778899aabbccddeeff"]
//! }
//! ```
//! Read by `parse` (which calls [`read_identity`] and [`read_secret_previous`] and keeps their
//! issues); [`check_own_pin`] is the one rule that needs this node's key, checked at start.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};

use super::url::quote;
use super::{secret_strength, Config, ConfigIssue, SECRET_MIN_CHARS};
use crate::error::{json_type_name, Error, ErrorCode};
use crate::identity::{keyfile, Fingerprint};

/// Most entries of `identity.pins`: the mesh's default node bound.
pub const MAX_PINS: usize = 4096;
/// Most entries of `identity.revoked`.
pub const MAX_REVOKED: usize = 4096;
/// The JSON Schema `pattern` of a fingerprint (`ed25519:` + 32 hex digits, see
/// [`Fingerprint::parse`]). Kept identical to the manifest by `tests/config_schema_sync.rs`.
pub const FINGERPRINT_PATTERN: &str = "^ed25519:[0-9A-Fa-f]{32}$";

const IDENTITY_KEYS: &[&str] = &["keyFile", "pins", "revoked"];

/// The `identity` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IdentityConfig {
    /// Where the node key lives (`identity.keyFile`); `None` = `<stateDir>/node.key`.
    pub key_file: Option<String>,
    /// Pinned keys (`identity.pins`): a pinned node is accepted only with this fingerprint, and
    /// never by trust on first use.
    pub pins: BTreeMap<String, Fingerprint>,
    /// Keys refused mesh-wide (`identity.revoked`): handshakes, records, calls.
    pub revoked: BTreeSet<Fingerprint>,
}

impl IdentityConfig {
    /// Whether nothing is set (a 0.1.8 config); `to_json` then leaves the section out.
    pub fn is_default(&self) -> bool {
        *self == IdentityConfig::default()
    }

    /// The fingerprint `node` is pinned to, if any.
    pub fn pin(&self, node: &str) -> Option<Fingerprint> {
        self.pins.get(node).copied()
    }

    /// Whether `fp` is revoked.
    pub fn is_revoked(&self, fp: &Fingerprint) -> bool {
        self.revoked.contains(fp)
    }

    /// The node key path: `identity.keyFile`, else `<state_dir>/node.key`; `None` when neither
    /// is known.
    pub fn key_path(&self, state_dir: Option<&Path>) -> Option<PathBuf> {
        match (&self.key_file, state_dir) {
            (Some(f), _) => Some(PathBuf::from(f)),
            (None, Some(d)) => Some(keyfile::default_path(d)),
            (None, None) => None,
        }
    }

    /// The section as config JSON; only the fields that are set.
    pub(super) fn to_json(&self) -> Value {
        let mut obj = Map::new();
        if let Some(f) = &self.key_file {
            obj.insert("keyFile".to_owned(), Value::from(f.as_str()));
        }
        if !self.pins.is_empty() {
            let pins = self
                .pins
                .iter()
                .map(|(id, fp)| (id.clone(), Value::from(fp.to_string())))
                .collect();
            obj.insert("pins".to_owned(), Value::Object(pins));
        }
        if !self.revoked.is_empty() {
            let revoked = self
                .revoked
                .iter()
                .map(|fp| Value::from(fp.to_string()))
                .collect();
            obj.insert("revoked".to_owned(), Value::Array(revoked));
        }
        Value::Object(obj)
    }
}

/// Checks this node's own key against the config, at start: when our node id is pinned, our
/// key (`own`) must be the pinned one, and our key must not be revoked. Code
/// [`ErrorCode::ConfigInvalid`], naming the field.
pub fn check_own_pin(cfg: &Config, own: &Fingerprint) -> Result<(), Error> {
    let id = &cfg.node_id;
    if let Some(pinned) = cfg.identity.pin(id) {
        if pinned != *own {
            return Err(Error::new(
                ErrorCode::ConfigInvalid,
                format!(
                    "identity.pins.{}: pins this node ({}) to {pinned}, but its node key is \
                     {own}: fix the pin, or point identity.keyFile at the pinned key",
                    super::parse::quote_key(id),
                    quote(id)
                ),
            ));
        }
    }
    if cfg.identity.is_revoked(own) {
        return Err(Error::new(
            ErrorCode::ConfigInvalid,
            format!(
                "identity.revoked: lists this node's own key {own}: a revoked key is refused by \
                 every node; remove the key file to create a new key (and pin or reset it on \
                 the other nodes)"
            ),
        ));
    }
    Ok(())
}

/// Reads `secretPrevious`: optional; the same rules as `secret` (at least
/// [`SECRET_MIN_CHARS`], a low-entropy warning), and different from `secret`.
pub(super) fn read_secret_previous(
    root: &Map<String, Value>,
    secret: Option<&str>,
    errors: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
) -> Option<String> {
    const FIELD: &str = "secretPrevious";
    let s = match root.get(FIELD)? {
        Value::String(s) => s,
        other => {
            errors.push(type_issue(FIELD, "a string", other));
            return None;
        }
    };
    if s.chars().count() < SECRET_MIN_CHARS {
        errors.push(ConfigIssue::new(
            FIELD,
            format!("must be at least {SECRET_MIN_CHARS} characters long"),
        ));
        return None;
    }
    if Some(s.as_str()) == secret {
        errors.push(ConfigIssue::new(
            FIELD,
            "must differ from secret (it holds the old secret during a rotation; remove it once \
             every node has the new one)",
        ));
        return None;
    }
    let bits = secret_strength::estimated_bits(s);
    if bits < secret_strength::SECRET_MIN_BITS {
        warnings.push(ConfigIssue::new(
            FIELD,
            super::parse::low_entropy_reason(bits),
        ));
    }
    Some(s.clone())
}

/// Reads the `identity` section (absent = the default).
pub(super) fn read_identity(
    root: &Map<String, Value>,
    errors: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
) -> IdentityConfig {
    const PATH: &str = "identity";
    let mut out = IdentityConfig::default();
    let Some(v) = root.get(PATH) else {
        return out;
    };
    let Value::Object(obj) = v else {
        errors.push(type_issue(PATH, "an object", v));
        return out;
    };
    for key in obj.keys() {
        if !IDENTITY_KEYS.contains(&key.as_str()) {
            errors.push(ConfigIssue::new(
                format!("{PATH}.{}", super::parse::quote_key(key)),
                "unknown field",
            ));
        }
    }
    out.key_file = read_key_file(obj, errors);
    out.revoked = read_revoked(obj, errors);
    out.pins = read_pins(obj, &out.revoked, errors, warnings);
    out
}

/// `identity.keyFile`: a non-empty path without control characters (like the `tls` files;
/// checked for existence at start, so a config validates on another machine).
fn read_key_file(obj: &Map<String, Value>, errors: &mut Vec<ConfigIssue>) -> Option<String> {
    const FIELD: &str = "identity.keyFile";
    match obj.get("keyFile")? {
        Value::String(s) if !s.is_empty() && !s.chars().any(char::is_control) => Some(s.clone()),
        Value::String(_) => {
            errors.push(ConfigIssue::new(
                FIELD,
                "must be a non-empty file path without control characters",
            ));
            None
        }
        other => {
            errors.push(type_issue(FIELD, "a string", other));
            None
        }
    }
}

/// `identity.revoked`: fingerprints, no duplicates, at most [`MAX_REVOKED`].
fn read_revoked(obj: &Map<String, Value>, errors: &mut Vec<ConfigIssue>) -> BTreeSet<Fingerprint> {
    const FIELD: &str = "identity.revoked";
    let mut out = BTreeSet::new();
    let items = match obj.get("revoked") {
        None => return out,
        Some(Value::Array(items)) => items,
        Some(other) => {
            errors.push(type_issue(FIELD, "an array", other));
            return out;
        }
    };
    if items.len() > MAX_REVOKED {
        errors.push(ConfigIssue::new(
            FIELD,
            format!("at most {MAX_REVOKED} keys, got {}", items.len()),
        ));
        return out;
    }
    let mut first_at: BTreeMap<Fingerprint, usize> = BTreeMap::new();
    for (i, item) in items.iter().enumerate() {
        let path = format!("{FIELD}[{i}]");
        let Some(fp) = fingerprint(item, &path, errors) else {
            continue;
        };
        if let Some(first) = first_at.get(&fp) {
            errors.push(ConfigIssue::new(
                path,
                format!("duplicate key {fp} (also {FIELD}[{first}])"),
            ));
            continue;
        }
        first_at.insert(fp, i);
        out.insert(fp);
    }
    out
}

/// `identity.pins`: node id → fingerprint, at most [`MAX_PINS`]; a pinned key must not be
/// revoked. The same key pinned for two node ids is a warning (a key speaks for one node).
fn read_pins(
    obj: &Map<String, Value>,
    revoked: &BTreeSet<Fingerprint>,
    errors: &mut Vec<ConfigIssue>,
    warnings: &mut Vec<ConfigIssue>,
) -> BTreeMap<String, Fingerprint> {
    const FIELD: &str = "identity.pins";
    let mut out = BTreeMap::new();
    let map = match obj.get("pins") {
        None => return out,
        Some(Value::Object(map)) => map,
        Some(other) => {
            errors.push(type_issue(FIELD, "an object", other));
            return out;
        }
    };
    if map.len() > MAX_PINS {
        errors.push(ConfigIssue::new(
            FIELD,
            format!("at most {MAX_PINS} pins, got {}", map.len()),
        ));
        return out;
    }
    let mut by_key: BTreeMap<Fingerprint, &str> = BTreeMap::new();
    for (id, v) in map {
        let path = format!("{FIELD}.{}", super::parse::quote_key(id));
        if !super::is_valid_id(id) {
            errors.push(ConfigIssue::new(
                path,
                format!(
                    "invalid node id {}: use 1-{} characters of A-Z a-z 0-9 . _ -, starting \
                     with a letter or digit",
                    quote(id),
                    super::ID_MAX_CHARS
                ),
            ));
            continue;
        }
        let Some(fp) = fingerprint(v, &path, errors) else {
            continue;
        };
        if revoked.contains(&fp) {
            errors.push(ConfigIssue::new(
                path,
                format!("pins {fp}, which identity.revoked lists: pin the node's new key"),
            ));
            continue;
        }
        if let Some(other) = by_key.get(&fp) {
            warnings.push(ConfigIssue::new(
                path.clone(),
                format!(
                    "same key as identity.pins.{}: a node key speaks for one node id",
                    super::parse::quote_key(other)
                ),
            ));
        } else {
            by_key.insert(fp, id);
        }
        out.insert(id.clone(), fp);
    }
    out
}

/// A fingerprint string at `path`, or the issue.
fn fingerprint(v: &Value, path: &str, errors: &mut Vec<ConfigIssue>) -> Option<Fingerprint> {
    let Value::String(s) = v else {
        errors.push(type_issue(path, "a string", v));
        return None;
    };
    match Fingerprint::parse(s) {
        Ok(fp) => Some(fp),
        Err(why) => {
            errors.push(ConfigIssue::new(
                path,
                format!(
                    "invalid key fingerprint {}: {why}",
                    quote(&s.chars().take(80).collect::<String>())
                ),
            ));
            None
        }
    }
}

fn type_issue(path: impl Into<String>, expected: &str, got: &Value) -> ConfigIssue {
    ConfigIssue::new(
        path,
        format!("expected {expected}, got {}", json_type_name(got)),
    )
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::identity::NodeKey;

    /// A secret the low-entropy check accepts.
    const SECRET: &str = "Vq7#pL2mX9tR4wKz";
    const OLD_SECRET: &str = "Hb3$kW8nQ5zT1yJd";

    fn fp(b: u8) -> String {
        format!("ed25519:{}", format!("{b:02x}").repeat(16))
    }

    fn cfg(extra: Value) -> Result<super::super::Validated, super::super::ConfigError> {
        let mut v = json!({"nodeId": "n1", "secret": SECRET, "listen": true});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        Config::from_json(&v)
    }

    /// The single issue of a rejected config, as `path: reason`.
    fn the_error(extra: Value) -> String {
        match cfg(extra.clone()) {
            Ok(v) => panic!("{extra} was accepted: {:?}", v.warnings),
            Err(e) => {
                assert_eq!(e.issues.len(), 1, "{extra}: {e}");
                e.issues[0].to_string()
            }
        }
    }

    #[test]
    fn a_config_without_identity_fields_gets_the_defaults_and_emits_none_of_them() {
        let v = cfg(json!({})).unwrap();
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        let c = v.config;
        assert!(c.identity.is_default());
        assert_eq!(c.secret_previous, None);
        let out = c.to_json();
        assert!(out.get("identity").is_none() && out.get("secretPrevious").is_none());
        assert_eq!(
            c.identity.key_path(Some(Path::new("/state"))),
            Some(PathBuf::from("/state/node.key"))
        );
        assert_eq!(c.identity.key_path(None), None);
    }

    #[test]
    fn a_full_identity_section_parses_and_round_trips() {
        let input = json!({
            "secretPrevious": OLD_SECRET,
            "identity": {
                "keyFile": "/etc/cm/node.key",
                "pins": {"cloud-01": fp(1), "office.eu": fp(2).to_uppercase().replace("ED25519", "ed25519")},
                "revoked": [fp(3), fp(4)]
            }
        });
        let v = cfg(input).unwrap();
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        let c = v.config;
        assert_eq!(c.secret_previous.as_deref(), Some(OLD_SECRET));
        assert_eq!(c.identity.key_file.as_deref(), Some("/etc/cm/node.key"));
        assert_eq!(
            c.identity.key_path(Some(Path::new("/state"))),
            Some(PathBuf::from("/etc/cm/node.key"))
        );
        assert_eq!(c.identity.pin("cloud-01"), Fingerprint::parse(&fp(1)).ok());
        assert_eq!(c.identity.pin("office.eu"), Fingerprint::parse(&fp(2)).ok());
        assert_eq!(c.identity.pin("n2"), None);
        assert!(c.identity.is_revoked(&Fingerprint::parse(&fp(4)).unwrap()));
        assert!(!c.identity.is_revoked(&Fingerprint::parse(&fp(1)).unwrap()));
        let out = c.to_json();
        assert_eq!(
            out["identity"],
            json!({"keyFile": "/etc/cm/node.key", "pins": {"cloud-01": fp(1), "office.eu": fp(2)}, "revoked": [fp(3), fp(4)]})
        );
        assert_eq!(Config::from_json(&out).unwrap().config, c);
    }

    #[test]
    fn bad_identity_fields_are_rejected_naming_the_field() {
        let cases = [
            (json!({"identity": []}), "identity: expected an object, got array"),
            (json!({"identity": {"pinned": {}}}), "identity.pinned: unknown field"),
            (json!({"identity": {"keyFile": ""}}), "identity.keyFile: must be a non-empty file path"),
            (json!({"identity": {"keyFile": 7}}), "identity.keyFile: expected a string, got number"),
            (json!({"identity": {"pins": []}}), "identity.pins: expected an object, got array"),
            (json!({"identity": {"pins": {"cloud-01": "abc"}}}), "identity.pins.cloud-01: invalid key fingerprint \"abc\": a key fingerprint starts with 'ed25519:'"),
            (json!({"identity": {"pins": {"cloud-01": "ed25519:12"}}}), "identity.pins.cloud-01: invalid key fingerprint \"ed25519:12\": a key fingerprint is 'ed25519:' followed by 32 hex digits"),
            (json!({"identity": {"pins": {"cloud-01": 1}}}), "identity.pins.cloud-01: expected a string, got number"),
            (json!({"identity": {"pins": {"cloud 01": fp(1)}}}), "identity.pins.\"cloud 01\": invalid node id \"cloud 01\""),
            (json!({"identity": {"pins": {"-x": fp(1)}}}), "identity.pins.-x: invalid node id \"-x\""),
            (json!({"identity": {"revoked": fp(1)}}), "identity.revoked: expected an array, got string"),
            (json!({"identity": {"revoked": [fp(1), "ed25519:zz"]}}), "identity.revoked[1]: invalid key fingerprint"),
            (json!({"identity": {"revoked": [fp(1), fp(1).to_uppercase().replace("ED25519", "ed25519")]}}), "identity.revoked[1]: duplicate key ed25519:0101"),
            (json!({"identity": {"pins": {"cloud-01": fp(1)}, "revoked": [fp(1)]}}), "identity.pins.cloud-01: pins ed25519:0101"),
            (json!({"secretPrevious": "short"}), "secretPrevious: must be at least 16 characters long"),
            (json!({"secretPrevious": SECRET}), "secretPrevious: must differ from secret"),
            (json!({"secretPrevious": 12}), "secretPrevious: expected a string, got number"),
        ];
        for (extra, want) in cases {
            let got = the_error(extra.clone());
            assert!(got.starts_with(want), "{extra}\n got: {got}\nwant: {want}");
        }
    }

    #[test]
    fn a_revoked_pin_error_says_which_list_and_never_echoes_secrets() {
        let got = the_error(json!({"identity": {"pins": {"a": fp(5)}, "revoked": [fp(5)]}}));
        assert!(got.contains("which identity.revoked lists"), "{got}");
        let short = "old-hunter2";
        let e = cfg(json!({"secretPrevious": short})).unwrap_err();
        assert!(!e.to_string().contains(short), "{e}");
    }

    #[test]
    fn a_weak_previous_secret_is_accepted_with_a_warning() {
        let v = cfg(json!({"secretPrevious": "0123456789abcdef"})).unwrap();
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert_eq!(v.warnings[0].path, "secretPrevious");
        assert!(v.warnings[0].reason.contains("looks low-entropy"));
    }

    #[test]
    fn the_same_key_pinned_for_two_nodes_is_a_warning() {
        let v = cfg(json!({"identity": {"pins": {"a": fp(6), "b": fp(6)}}})).unwrap();
        assert_eq!(v.warnings.len(), 1, "{:?}", v.warnings);
        assert_eq!(v.warnings[0].path, "identity.pins.b");
        assert!(v.warnings[0].reason.contains("same key as identity.pins.a"));
        assert_eq!(v.config.identity.pins.len(), 2);
    }

    #[test]
    fn pins_and_revoked_are_bounded() {
        let pins: Map<String, Value> = (0..=MAX_PINS)
            .map(|i| (format!("n{i}"), Value::from(fp(7))))
            .collect();
        let got = the_error(json!({"identity": {"pins": pins}}));
        assert_eq!(got, "identity.pins: at most 4096 pins, got 4097");
        let revoked: Vec<Value> = (0..=MAX_REVOKED).map(|_| Value::from(fp(8))).collect();
        let got = the_error(json!({"identity": {"revoked": revoked}}));
        assert_eq!(got, "identity.revoked: at most 4096 keys, got 4097");

        // Exactly at the bound is fine.
        let revoked: Vec<Value> = (0..MAX_REVOKED)
            .map(|i| Value::from(format!("ed25519:{:032x}", i)))
            .collect();
        let c = cfg(json!({"identity": {"revoked": revoked}}))
            .unwrap()
            .config;
        assert_eq!(c.identity.revoked.len(), MAX_REVOKED);
    }

    #[test]
    fn our_own_pin_must_match_our_key_and_our_key_must_not_be_revoked() {
        let ours = NodeKey::from_seed(&[1; 32]).fingerprint();
        let other = NodeKey::from_seed(&[2; 32]).fingerprint();

        let c = cfg(json!({})).unwrap().config;
        assert_eq!(check_own_pin(&c, &ours), Ok(()), "no pin: any key");

        let c = cfg(json!({"identity": {"pins": {"n1": ours.to_string()}}}))
            .unwrap()
            .config;
        assert_eq!(check_own_pin(&c, &ours), Ok(()));
        let e = check_own_pin(&c, &other).unwrap_err();
        assert_eq!(e.code, ErrorCode::ConfigInvalid);
        assert!(e.message.starts_with("identity.pins.n1: "), "{e}");
        assert!(
            e.message
                .contains(&format!("to {ours}, but its node key is {other}")),
            "{e}"
        );

        let c = cfg(json!({"identity": {"revoked": [ours.to_string()]}}))
            .unwrap()
            .config;
        let e = check_own_pin(&c, &ours).unwrap_err();
        assert!(
            e.message
                .starts_with("identity.revoked: lists this node's own key"),
            "{e}"
        );
        assert_eq!(check_own_pin(&c, &other), Ok(()));
    }

    #[test]
    fn debug_and_redacted_json_hide_the_previous_secret() {
        let c = cfg(json!({"secretPrevious": OLD_SECRET})).unwrap().config;
        assert!(!format!("{c:?}").contains(OLD_SECRET));
        assert_eq!(c.redacted_json()["secretPrevious"], "***");
        assert_eq!(c.to_json()["secretPrevious"], OLD_SECRET);
    }
}
