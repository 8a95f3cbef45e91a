//! The serving node's tool policy, one row per case (spec §1: enabled / allow / deny, `*`,
//! empty lists, deny wins).

mod tools_support;

use clawmatrix::error::ErrorCode;
use clawmatrix::tools::policy::ToolPolicy;
use tools_support::proxy;

const DISABLED: &str = "tool proxy is disabled on office-01 (toolProxy.enabled is false)";

/// (case, enabled, allow, deny, tool, expected refusal or `None` for allowed)
type Row = (
    &'static str,
    bool,
    &'static [&'static str],
    &'static [&'static str],
    &'static str,
    Option<&'static str>,
);

#[test]
fn policy_table_one_row_per_case() {
    let rows: &[Row] = &[
        (
            "disabled by default refuses everything",
            false,
            &[],
            &[],
            "read",
            Some(DISABLED),
        ),
        (
            "disabled wins over an explicit allow",
            false,
            &["exec"],
            &[],
            "exec",
            Some(DISABLED),
        ),
        (
            "enabled with empty allow allows any tool",
            true,
            &[],
            &[],
            "web_search",
            None,
        ),
        (
            "enabled with allow * allows any tool",
            true,
            &["*"],
            &[],
            "exec",
            None,
        ),
        (
            "a listed tool is allowed",
            true,
            &["read", "exec"],
            &[],
            "exec",
            None,
        ),
        (
            "an unlisted tool is refused",
            true,
            &["read"],
            &[],
            "write",
            Some("tool \"write\" is not in toolProxy.allow on office-01"),
        ),
        (
            "deny refuses with an empty allow",
            true,
            &[],
            &["exec"],
            "exec",
            Some("tool \"exec\" is denied by toolProxy.deny on office-01"),
        ),
        (
            "deny wins over an explicit allow",
            true,
            &["exec"],
            &["exec"],
            "exec",
            Some("tool \"exec\" is denied by toolProxy.deny on office-01"),
        ),
        (
            "deny wins over allow *",
            true,
            &["*"],
            &["write"],
            "write",
            Some("tool \"write\" is denied by toolProxy.deny on office-01"),
        ),
        (
            "deny of another tool does not matter",
            true,
            &["*"],
            &["write"],
            "read",
            None,
        ),
        (
            "deny * refuses everything",
            true,
            &[],
            &["*"],
            "read",
            Some("tool \"read\" is denied by toolProxy.deny on office-01"),
        ),
        (
            "deny ignores ASCII case",
            true,
            &[],
            &["browser"],
            "Browser",
            Some("tool \"Browser\" is denied by toolProxy.deny on office-01"),
        ),
        (
            "allow matches exactly",
            true,
            &["read"],
            &[],
            "READ",
            Some("tool \"READ\" is not in toolProxy.allow on office-01"),
        ),
        (
            "an empty tool name is not allowed by a list",
            true,
            &["read"],
            &[],
            "",
            Some("tool \"\" is not in toolProxy.allow on office-01"),
        ),
        (
            "control characters in a refused name are escaped",
            true,
            &["read"],
            &[],
            "a\nb",
            Some("tool \"a\\nb\" is not in toolProxy.allow on office-01"),
        ),
    ];
    for (case, enabled, allow, deny, tool, want) in rows {
        let policy = ToolPolicy::from_config("office-01", &proxy(*enabled, allow, deny));
        let got = policy.check(tool);
        match want {
            None => assert!(got.is_ok(), "{case}: {got:?}"),
            Some(msg) => {
                let err = got.expect_err(case);
                assert_eq!(err.code, ErrorCode::Denied, "{case}");
                assert_eq!(err.message, *msg, "{case}");
            }
        }
    }
}

#[test]
fn a_huge_tool_name_is_refused_with_a_bounded_message() {
    let policy = ToolPolicy::from_config("office-01", &proxy(true, &["read"], &[]));
    let name = "x".repeat(100_000);
    let err = policy.check(&name).expect_err("refused");
    assert!(err.message.len() < 400, "{}", err.message.len());
    assert!(err.message.contains('…'));
}
