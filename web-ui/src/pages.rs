//! Server-rendered HTML. Every value from the database or another part is escaped with
//! [`escape`]; pages load only our own script and stylesheet, by path and integrity hash,
//! under the strict CSP in `security.rs`. No inline script or style anywhere.

use std::fmt::Write as _;

use crate::acme::CertificateStatus;
use crate::console::AttestationStatus;
use crate::console::{Sample, ServiceHealth};
use crate::store::{Invitation, StoredPasskey, User};
use crate::tls::CertificateFacts;
use cloister_tee::TeeKind;

/// Escapes text for HTML element content and quoted attribute values.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// What every page needs around its body.
#[derive(Debug, Clone)]
pub struct Frame<'a> {
    /// The page's name, for `data-page` (the script's entry point) and the title.
    pub page: &'a str,
    /// The title shown.
    pub title: &'a str,
    /// The CSRF token the script echoes in a header.
    pub csrf_token: &'a str,
    /// The certificate, for the self-signed banner.
    pub certificate: &'a CertificateFacts,
    /// Integrity hashes of the script and stylesheet.
    pub script_integrity: &'a str,
    /// Integrity hash of the stylesheet.
    pub style_integrity: &'a str,
    /// Who is signed in.
    pub user: Option<&'a User>,
    /// Whether the TEE is simulated: then every page says so, loudly.
    pub simulated: bool,
    /// More tags for the head (already escaped): the chat page's modules.
    pub extra_head: &'a str,
}

/// Wraps `body` into a complete page.
pub fn page(frame: &Frame<'_>, body: &str) -> String {
    let mut html = String::with_capacity(body.len() + 2048);
    let _ = write!(
        html,
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"csrf-token\" content=\"{csrf}\">\
<title>{title} · Cloister</title>\
<link rel=\"stylesheet\" href=\"/assets/style.css\" integrity=\"{style}\">\
<script src=\"/assets/app.js\" integrity=\"{script}\" defer></script>{extra_head}\
</head><body data-page=\"{page}\">",
        csrf = escape(frame.csrf_token),
        title = escape(frame.title),
        style = escape(frame.style_integrity),
        script = escape(frame.script_integrity),
        page = escape(frame.page),
        extra_head = frame.extra_head,
    );
    if frame.simulated {
        html.push_str(
            "<div class=\"banner simulated\" id=\"simulated-banner\">SIMULATED, not confidential: \
this box runs a simulated TEE for development. Do not say anything private here.</div>",
        );
    }
    if frame.certificate.self_signed {
        let _ = write!(
            html,
            "<div class=\"banner\" id=\"self-signed-banner\">This box uses a self-signed certificate \
(no domain is set). Check that this fingerprint matches the one on the box's console: \
<code id=\"fingerprint\">{}</code></div>",
            escape(&frame.certificate.fingerprint_sha256)
        );
    }
    html.push_str("<header><a href=\"/\" class=\"brand\">Cloister</a><nav>");
    if let Some(user) = frame.user {
        if user.is_owner {
            html.push_str("<a href=\"/console\">Console</a>");
        }
        let _ = write!(
            html,
            "<a href=\"/account\">Passkeys</a><span class=\"who\">{}</span>\
<button id=\"sign-out\" type=\"button\">Sign out</button>",
            escape(&user.name)
        );
    }
    let _ = write!(
        html,
        "</nav></header><main><h1>{}</h1>{body}<p id=\"message\" role=\"status\"></p></main></body></html>",
        escape(frame.title)
    );
    html
}

/// The home page for someone signed in.
pub fn home_signed_in(user: &User) -> String {
    format!(
        "<p id=\"signed-in\">Signed in as <strong>{}</strong>.</p>\
<p><a href=\"/chat\" id=\"open-chat\">Open the chat</a></p>",
        escape(&user.name)
    )
}

/// The sign-in page.
pub fn sign_in(has_owner: bool) -> String {
    if has_owner {
        "<p>Sign in with your passkey. No user name needed.</p>\
<button id=\"sign-in\" type=\"button\">Sign in with a passkey</button>"
            .to_owned()
    } else {
        "<p>This box has no owner yet. Enter the setup code printed on the box's console at \
<a href=\"/setup\">setup</a>.</p>"
            .to_owned()
    }
}

/// The owner setup page.
pub fn setup() -> String {
    "<form id=\"setup-form\"><label>Setup code <input id=\"setup-code\" name=\"code\" \
autocomplete=\"off\" required></label><label>Your name <input id=\"setup-name\" name=\"name\" \
maxlength=\"64\" required></label><button type=\"submit\">Create the owner's passkey</button></form>"
        .to_owned()
}

/// The invitation page; the token stays in the URL fragment until the script posts it.
pub fn invitation() -> String {
    "<p>You were invited to this box. Create a passkey to join.</p>\
<button id=\"accept-invitation\" type=\"button\">Create my passkey</button>"
        .to_owned()
}

fn date(seconds: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(seconds)
        .map(|t| {
            format!(
                "{:04}-{:02}-{:02} {:02}:{:02} UTC",
                t.year(),
                u8::from(t.month()),
                t.day(),
                t.hour(),
                t.minute()
            )
        })
        .unwrap_or_else(|_| "-".to_owned())
}

fn passkey_rows(passkeys: &[StoredPasskey], revocable: bool) -> String {
    let mut html = String::new();
    for passkey in passkeys {
        let id = hex::encode(&passkey.credential_id);
        let _ = write!(
            html,
            "<li class=\"passkey\" data-credential=\"{id}\">{} · added {} · last used {}",
            escape(&passkey.label),
            date(passkey.created_at_s),
            if passkey.last_used_at_s == 0 {
                "never".to_owned()
            } else {
                date(passkey.last_used_at_s)
            }
        );
        if revocable {
            let _ = write!(
                html,
                " <button type=\"button\" data-action=\"revoke-passkey\" data-id=\"{id}\">Revoke passkey</button>"
            );
        }
        html.push_str("</li>");
    }
    html
}

/// The user's own passkeys.
pub fn account(passkeys: &[StoredPasskey]) -> String {
    format!(
        "<ul id=\"my-passkeys\">{}</ul><button id=\"add-passkey\" type=\"button\">Add a passkey</button>",
        passkey_rows(passkeys, false)
    )
}

/// Everything the console shows.
#[derive(Debug)]
pub struct ConsoleView<'a> {
    /// Services, or `None` if the supervisor was not reachable.
    pub services: Option<&'a [ServiceHealth]>,
    /// Model metrics, or `None` if model-runner was not reachable or not configured.
    pub metrics: Option<&'a [Sample]>,
    /// The certificate being served.
    pub certificate: &'a CertificateFacts,
    /// ACME status, when a domain is configured.
    pub acme: Option<&'a CertificateStatus>,
    /// Users with their passkeys.
    pub users: &'a [(User, Vec<StoredPasskey>)],
    /// Invitations.
    pub invitations: &'a [Invitation],
    /// The image's expected measurements, or `None` if no file is configured or readable.
    pub measurements: Option<&'a [(String, String)]>,
    /// The TEE and a quote made for this page, or `None` when no TEE is wired in.
    pub attestation: Option<&'a AttestationStatus>,
    /// Recent log lines, or `None` if unavailable.
    pub logs: Option<&'a [String]>,
    /// Now, seconds since the Unix epoch.
    pub now_s: i64,
}

/// A long value (a hash, a register, a key) on one line: cut to fit with an ellipsis, whole
/// in its tooltip and under its copy button (app.js). An empty value shows as a dash.
fn long_value(value: &str) -> String {
    if value.is_empty() {
        return "<span class=\"value none\">-</span>".to_owned();
    }
    let value = escape(value);
    format!(
        "<span class=\"value\"><code title=\"{value}\">{value}</code>\
<button type=\"button\" class=\"copy\" data-copy=\"{value}\">Copy</button></span>"
    )
}

/// The TEE, and the verification of an attestation the box made for this page: each of
/// the verifier's checks with its verdict, its values and, when it fails, the reason.
fn attestation_section(html: &mut String, status: Option<&AttestationStatus>) {
    let Some(status) = status else {
        html.push_str(
            "<p class=\"warn\" id=\"attestation-status\">Attestation status: no TEE is connected to the console in this build.</p>",
        );
        return;
    };
    let tee = match &status.tee {
        Ok(TeeKind::Tdx) => "Intel TDX".to_owned(),
        Ok(TeeKind::Simulated) => "SIMULATED, not confidential".to_owned(),
        Err(reason) => format!("none ({reason})"),
    };
    let _ = write!(
        html,
        "<dl id=\"attestation-status\"><dt>TEE</dt><dd id=\"tee-kind\">{}</dd>",
        escape(&tee)
    );
    if let Ok(report) = &status.verification
        && let Some(debug) = report.check("debug_off")
    {
        let _ = write!(
            html,
            "<dt>Debug mode</dt><dd>{}</dd>",
            if debug.actual == "on" {
                "ON: the host can read this TD's memory".to_owned()
            } else {
                escape(&debug.actual)
            }
        );
    }
    html.push_str("</dl>");
    if let Some(problem) = &status.expected_problem {
        let _ = write!(
            html,
            "<p class=\"warn\" id=\"expected-problem\">{}</p>",
            escape(problem)
        );
    }
    let report = match &status.verification {
        Err(reason) => {
            let _ = write!(
                html,
                "<p class=\"warn\" id=\"attestation-verdict\">Not verified: {}</p>",
                escape(reason)
            );
            return;
        }
        Ok(report) => report,
    };
    let failed = report.failed();
    let verdict = match (failed.is_empty(), report.simulated) {
        (true, true) => "VERIFIED, but SIMULATED, not confidential: every check passes \
                         against the development chain, which proves nothing about secrecy"
            .to_owned(),
        (true, false) => {
            "Verified: every check passes, as a user's verifier would see it".to_owned()
        }
        (false, _) => format!("FAILS the check(s): {}", failed.join(", ")),
    };
    let _ = write!(
        html,
        "<p class=\"{}\" id=\"attestation-verdict\">{}</p>",
        if failed.is_empty() && !report.simulated {
            "ok"
        } else {
            "warn"
        },
        escape(&verdict)
    );
    if let Some(error) = &report.error {
        let _ = write!(html, "<p class=\"warn\">{}</p>", escape(error));
    }
    let _ = write!(
        html,
        "<p>An attestation made for this page (as <code>GET /attestation</code> makes it, with \
         a fresh nonce), checked by the verifier users run; trust root: {}.</p>\
<table id=\"attestation-checks\" class=\"long-values\"><thead><tr><th class=\"name\">Check</th>\
<th class=\"result\">Result</th><th>Expected, found and why</th></tr></thead><tbody>",
        escape(if report.trust_root.is_empty() {
            "none"
        } else {
            &report.trust_root
        })
    );
    for check in &report.checks {
        let _ = write!(
            html,
            "<tr class=\"check {}\" data-check=\"{}\"><td class=\"name\" title=\"{}\">{}</td>\
<td class=\"result {}\">{}</td><td class=\"values\">\
<div class=\"labelled\"><span class=\"label\">expected</span>{}</div>\
<div class=\"labelled\"><span class=\"label\">found</span>{}</div>{}</td></tr>",
            if check.ok { "pass" } else { "fail" },
            escape(check.name),
            escape(check.title),
            escape(check.name),
            if check.ok { "ok" } else { "warn" },
            if check.ok { "pass" } else { "FAIL" },
            long_value(&check.expected),
            long_value(&check.actual),
            if check.detail.is_empty() {
                String::new()
            } else {
                format!("<p class=\"why\">{}</p>", escape(&check.detail))
            },
        );
    }
    html.push_str("</tbody></table>");
}

/// The owner's console.
pub fn console(view: &ConsoleView<'_>) -> String {
    let mut html = String::new();
    html.push_str("<section id=\"services\"><h2>Services</h2>");
    match view.services {
        None => html.push_str("<p class=\"warn\">The supervisor is not reachable.</p>"),
        Some(services) => {
            html.push_str("<table><tr><th>Service</th><th>State</th><th>Details</th></tr>");
            for service in services {
                let details = service
                    .details
                    .iter()
                    .map(|(k, v)| format!("{}={}", escape(k), escape(v)))
                    .collect::<Vec<_>>()
                    .join(" ");
                let _ = write!(
                    html,
                    "<tr class=\"service\"><td>{}</td><td>{}</td><td>{details}</td></tr>",
                    escape(&service.name),
                    escape(&service.state)
                );
            }
            html.push_str("</table>");
        }
    }
    html.push_str("</section><section id=\"model\"><h2>Model, queue and KV cache</h2>");
    match view.metrics {
        None => html.push_str("<p class=\"warn\">model-runner's metrics are not reachable.</p>"),
        Some(samples) => {
            html.push_str("<table>");
            for sample in samples.iter().take(60) {
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td></tr>",
                    escape(&sample.name),
                    sample.value
                );
            }
            html.push_str("</table>");
        }
    }
    let certificate = view.certificate;
    let days_left = (certificate.not_after_s - view.now_s) / 86_400;
    let _ = write!(
        html,
        "</section><section id=\"certificate\"><h2>Certificate</h2><dl>\
<dt>Kind</dt><dd id=\"certificate-kind\">{kind}</dd>\
<dt>Names</dt><dd>{names}</dd><dt>Issuer</dt><dd>{issuer}</dd>\
<dt>Expires</dt><dd id=\"certificate-expiry\">{expiry} ({days_left} days left)</dd>\
<dt>SHA-256 fingerprint</dt><dd><code>{fingerprint}</code></dd>",
        kind = if certificate.self_signed {
            "self-signed"
        } else {
            "issued by a CA"
        },
        names = escape(&certificate.names.join(", ")),
        issuer = escape(&certificate.issuer),
        expiry = date(certificate.not_after_s),
        fingerprint = escape(&certificate.fingerprint_sha256),
    );
    if let Some(acme) = view.acme {
        if let Some(record) = &acme.caa_record {
            let _ = write!(
                html,
                "<dt>CAA record to publish</dt><dd><code>{}</code></dd>",
                escape(record)
            );
        }
        if let Some(next) = acme.next_attempt_at_s {
            let why = acme
                .next_renewal_reason
                .map(|reason| format!(" ({})", reason.describe()))
                .unwrap_or_default();
            let _ = write!(
                html,
                "<dt>Next renewal attempt</dt><dd id=\"next-renewal\">{}{}</dd>",
                date(next),
                escape(&why)
            );
        }
        if let Some(window) = &acme.renewal_window {
            let _ = write!(
                html,
                "<dt>CA's renewal window (ARI)</dt><dd>{} to {}</dd>",
                date(window.start_s),
                date(window.end_s)
            );
        }
        if let Some(error) = &acme.last_error {
            let _ = write!(
                html,
                "<dt>Last failure</dt><dd class=\"warn\">{}</dd>",
                escape(error)
            );
        }
    }
    html.push_str(
        "</dl></section><section id=\"attestation\"><h2>Measurements and attestation</h2>",
    );
    match view.measurements {
        Some(registers) if !registers.is_empty() => {
            html.push_str(
                "<p>Expected launch measurements, as published with this image:</p>\
<table id=\"expected-registers\" class=\"long-values\">",
            );
            for (register, hex) in registers {
                let _ = write!(
                    html,
                    "<tr><td class=\"name\">{}</td><td class=\"values\">{}</td></tr>",
                    escape(register),
                    long_value(hex)
                );
            }
            html.push_str("</table>");
        }
        _ => html.push_str("<p class=\"warn\">No measurements file is configured.</p>"),
    }
    attestation_section(&mut html, view.attestation);
    html.push_str("</section>");
    html.push_str("<section id=\"users\"><h2>Users</h2><ul>");
    for (user, passkeys) in view.users {
        let id = hex::encode(user.id);
        let _ = write!(
            html,
            "<li class=\"user\" data-user=\"{id}\"><strong>{}</strong>{}{}",
            escape(&user.name),
            if user.is_owner { " (owner)" } else { "" },
            if user.revoked { " (revoked)" } else { "" }
        );
        if !user.is_owner && !user.revoked {
            let _ = write!(
                html,
                " <button type=\"button\" data-action=\"revoke-user\" data-id=\"{id}\">Revoke user</button>"
            );
        }
        let _ = write!(
            html,
            "<ul>{}</ul></li>",
            passkey_rows(passkeys, !user.revoked)
        );
    }
    html.push_str(
        "</ul></section><section id=\"invitations\"><h2>Invitations</h2>\
<form id=\"invite-form\"><label>Name <input id=\"invite-name\" maxlength=\"64\" required></label>\
<button type=\"submit\">Create an invitation link</button></form>\
<p>Link (shown once): <code id=\"invite-link\"></code></p><ul>",
    );
    for invitation in view.invitations {
        let state = if invitation.used {
            "used".to_owned()
        } else if invitation.expires_at_s <= view.now_s {
            "expired".to_owned()
        } else {
            format!("open until {}", date(invitation.expires_at_s))
        };
        let _ = write!(
            html,
            "<li class=\"invitation\">{} · {state}",
            escape(&invitation.name)
        );
        if !invitation.used {
            let _ = write!(
                html,
                " <button type=\"button\" data-action=\"withdraw-invitation\" data-id=\"{}\">Withdraw</button>",
                escape(&invitation.handle)
            );
        }
        html.push_str("</li>");
    }
    html.push_str("</ul></section><section id=\"logs\"><h2>Service logs</h2>");
    match view.logs {
        None => html.push_str("<p class=\"warn\">No logs: the supervisor is not reachable.</p>"),
        Some(lines) => {
            html.push_str("<pre>");
            for line in lines {
                html.push_str(&escape(line));
                html.push('\n');
            }
            html.push_str("</pre>");
        }
    }
    html.push_str("</section>");
    html
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_covers_markup_and_quotes() {
        assert_eq!(
            escape("<script>\"x\"&'y'</script>"),
            "&lt;script&gt;&quot;x&quot;&amp;&#39;y&#39;&lt;/script&gt;"
        );
    }

    #[test]
    fn long_values_are_one_escaped_line_with_a_copy_button() {
        let html = long_value("ab\"<cd>");
        assert_eq!(
            html,
            "<span class=\"value\"><code title=\"ab&quot;&lt;cd&gt;\">ab&quot;&lt;cd&gt;</code>\
<button type=\"button\" class=\"copy\" data-copy=\"ab&quot;&lt;cd&gt;\">Copy</button></span>"
        );
        assert_eq!(long_value(""), "<span class=\"value none\">-</span>");
    }

    #[test]
    fn a_hostile_user_name_is_inert_in_the_console() {
        let user = User {
            id: [1; 16],
            name: "<img src=x onerror=alert(1)>".into(),
            is_owner: false,
            created_at_s: 0,
            revoked: false,
        };
        let facts = CertificateFacts {
            names: vec!["box".into()],
            not_before_s: 0,
            not_after_s: 86_400 * 10,
            fingerprint_sha256: "AA".into(),
            spki_sha256_base64: String::new(),
            self_signed: true,
            issuer: "CN=x".into(),
        };
        let users = vec![(user, Vec::new())];
        let html = console(&ConsoleView {
            services: None,
            metrics: None,
            certificate: &facts,
            acme: None,
            users: &users,
            invitations: &[],
            measurements: None,
            attestation: None,
            logs: Some(&["<b>log</b>".to_owned()]),
            now_s: 0,
        });
        assert!(!html.contains("<img"));
        assert!(!html.contains("<b>log"));
        assert!(html.contains("10 days left"));
    }
}
