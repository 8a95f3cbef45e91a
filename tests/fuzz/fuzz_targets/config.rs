//! The config parser (`config::Config::from_json`, what the addon's `validateConfig` and
//! `start` call on the plugin config): arbitrary JSON-ish text never panics; a refusal names a
//! field for every issue (the document itself only when it is not a JSON object); a config
//! that validates comes back unchanged through `to_json` (its documented round trip), and its
//! redacted form and `Debug` do not depend on the secrets.

#![no_main]

use clawmatrix::config::Config;
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Ok(v) = serde_json::from_slice::<Value>(data) else {
        // Not JSON: the text entry refuses it with one issue for the document.
        if let Ok(text) = std::str::from_utf8(data) {
            let e = Config::from_json_str(text).expect_err("not JSON, yet valid");
            assert_eq!(e.issues.len(), 1);
        }
        return;
    };
    match Config::from_json(&v) {
        Err(e) => {
            assert!(!e.issues.is_empty(), "a refusal with no issue");
            for issue in &e.issues {
                assert!(
                    !issue.reason.is_empty(),
                    "an issue with no reason: {issue:?}"
                );
                assert!(
                    !issue.path.is_empty() || !v.is_object(),
                    "an issue that names no field in an object: {issue:?}"
                );
            }
        }
        Ok(valid) => {
            let c = valid.config;
            for w in &valid.warnings {
                assert!(!w.path.is_empty(), "a warning that names no field: {w:?}");
            }
            let back =
                Config::from_json(&c.to_json()).expect("to_json of a valid config validates");
            assert_eq!(back.config, c, "to_json round trip changed the config");
            // Neither the redacted form nor Debug depends on the secrets.
            let mut other = c.clone();
            other.secret = format!("{}x", c.secret);
            other.secret_previous = c.secret_previous.as_ref().map(|p| format!("{p}y"));
            assert_eq!(
                c.redacted_json(),
                other.redacted_json(),
                "redacted JSON shows a secret"
            );
            assert_eq!(
                format!("{c:?}"),
                format!("{other:?}"),
                "Debug shows a secret"
            );
        }
    }
});
