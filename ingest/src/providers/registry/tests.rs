//! The registry against everything that must agree with it: the settings
//! rule, the samples, the status words, the deploy checks, the event
//! schema, the worker's pending ranks and the README.

#![allow(clippy::unwrap_used)]

use super::*;
use crate::accounts::Accounts;
use crate::providers::{infobip, plivo, sinch, telnyx};
use crate::signature::Freshness;
use std::collections::BTreeSet;
use std::time::Duration;

const KEY: &str = "11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo=";

fn common(public_base_url: Option<&str>) -> Arc<Common> {
    Arc::new(Common {
        public_base_url: public_base_url.map(|u| url::Url::parse(u).unwrap()),
        freshness: Freshness { max_age: Duration::from_secs(259_200), max_future: Duration::from_secs(300) },
        accounts: Accounts::default(),
        basic_credentials: Vec::new(),
    })
}

fn modes(settings: &ProviderSettings) -> Vec<(Provider, Option<SignatureMode>)> {
    serve_all(settings, &common(None)).unwrap().iter().map(|s| (s.entry.provider(), s.mode)).collect()
}

fn error(settings: ProviderSettings) -> String {
    serve_all(&settings, &common(None)).unwrap_err().to_string()
}

fn repo_file(path: &str) -> String {
    std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap()
}

#[test]
fn the_registry_lists_every_provider_once_in_the_enum_order() {
    let listed: Vec<Provider> = REGISTRY.iter().map(|e| e.provider()).collect();
    assert_eq!(listed, Provider::ALL, "the registry and dlr_shared::Provider list the same providers");
    let routes: BTreeSet<&str> = REGISTRY.iter().map(|e| e.route().path).collect();
    assert_eq!(routes.len(), REGISTRY.len(), "one route per provider");
}

#[test]
fn every_provider_follows_one_rule_enforce_with_credentials_else_not_served() {
    let none = ProviderSettings::default();
    assert!(modes(&none).iter().all(|(_, mode)| mode.is_none()), "nothing configured, nothing served");
    let settings = ProviderSettings {
        vonage_sms: crate::providers::vonage_sms::Settings { secret: Some("s".into()), ..Default::default() },
        telnyx: telnyx::Settings { public_key: Some(KEY.into()), ..Default::default() },
        sinch: sinch::Settings { basic_auth: Some("u:p,w".into()), ..Default::default() },
        infobip: infobip::Settings { basic_auth: Some("u:p".into()), ..Default::default() },
        plivo: plivo::Settings { mode: Some(SignatureMode::Off), ..Default::default() },
        ..Default::default()
    };
    let enforce = Some(SignatureMode::Enforce);
    assert_eq!(
        modes(&settings),
        [
            (Provider::VonageSms, enforce),
            (Provider::VonageMessages, enforce),
            (Provider::Twilio, None),
            (Provider::Telnyx, enforce),
            (Provider::Plivo, Some(SignatureMode::Off)),
            (Provider::Sinch, enforce),
            (Provider::Infobip, enforce),
        ]
    );
}

#[test]
fn enforce_without_credentials_and_bad_values_fail_at_start_up() {
    let telnyx = ProviderSettings {
        telnyx: telnyx::Settings { mode: Some(SignatureMode::Enforce), ..Default::default() },
        ..Default::default()
    };
    assert!(error(telnyx).starts_with("TELNYX_PUBLIC_KEY"));
    let bad_key = ProviderSettings {
        telnyx: telnyx::Settings { public_key: Some("abc".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(error(bad_key).contains("Ed25519"));
    let plivo = ProviderSettings {
        plivo: plivo::Settings { auth_token: Some("t".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(error(plivo.clone()).starts_with("PUBLIC_BASE_URL"));
    assert!(serve_all(&plivo, &common(Some("https://dlr.example.com"))).is_ok());
    let infobip = ProviderSettings {
        infobip: infobip::Settings { basic_auth: Some("nocolon".into()), ..Default::default() },
        ..Default::default()
    };
    assert!(error(infobip).contains("user:password"));
    let log_only = ProviderSettings {
        sinch: sinch::Settings { mode: Some(SignatureMode::LogOnly), ..Default::default() },
        ..Default::default()
    };
    assert!(error(log_only).starts_with("SINCH_WEBHOOK_SECRET"));
}

/// The registry's variables are settings of `ingest --help`, and every
/// provider setting in `--help` belongs to the registry.
#[test]
fn every_listed_variable_is_a_setting() {
    use clap::CommandFactory;
    let command = crate::Config::command();
    command.clone().debug_assert();
    let settings: Vec<String> = command
        .get_arguments()
        .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
        .collect();
    for entry in REGISTRY {
        let names = entry.settings();
        for variable in std::iter::once(&names.mode_variable).chain(names.credential_variables) {
            assert!(settings.iter().any(|s| s == variable), "{variable} is not a setting");
        }
    }
    let about = command.get_about().map(ToString::to_string).unwrap_or_default();
    for entry in REGISTRY {
        assert!(about.contains(entry.name()), "`ingest --help` does not name {}", entry.name());
    }
}

/// `deploy/checks/manifests.py`'s provider table, as the registry makes it.
fn manifests_block() -> String {
    let mut block = String::from("PROVIDERS = {\n");
    let mut seen = Vec::new();
    for names in REGISTRY.iter().map(|e| e.settings()) {
        if seen.contains(&names.group) {
            continue;
        }
        seen.push(names.group);
        let credentials: Vec<String> =
            names.credential_variables.iter().map(|v| format!("\"{v}\"")).collect();
        let credentials = match credentials.as_slice() {
            [one] => format!("({one},)"),
            many => format!("({})", many.join(", ")),
        };
        let secret = if names.secret { "True" } else { "False" };
        block.push_str(&format!(
            "    \"{}\": (\"{}\", {credentials}, {secret}),\n",
            names.group, names.mode_variable
        ));
    }
    block.push('}');
    block
}

#[test]
fn the_deploy_checks_know_every_provider_setting_and_which_are_secret() {
    let manifests = repo_file("deploy/checks/manifests.py");
    let expected = manifests_block();
    assert!(
        manifests.contains(&expected),
        "deploy/checks/manifests.py: replace its PROVIDERS table (between BEGIN/END providers) with:\n{expected}"
    );
}

#[test]
fn infobip_credentials_may_contain_commas() {
    let settings = ProviderSettings {
        infobip: infobip::Settings {
            basic_auth: Some("user:pa,ss:word\nold:x\n".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let list = infobip::settings::configure(&settings, &common(None)).unwrap().credentials.unwrap();
    use secrecy::ExposeSecret;
    let got: Vec<&str> = list.iter().map(|s| s.expose_secret()).collect();
    assert_eq!(got, ["user:pa,ss:word", "old:x"]);
}

/// Every provider's samples read as the samples say (courier's
/// `handler_test.go` style: one table per provider, run by one loop).
#[test]
fn every_sample_reads_as_documented() {
    for entry in REGISTRY {
        assert!(!entry.samples().is_empty(), "{} has no samples", entry.name());
        for sample in entry.samples() {
            let what = format!("{} {}", entry.name(), sample.name);
            let read = entry.read(&sample.request(&entry.route()), Utc::now());
            match read {
                Ok(batch) if sample.status == 200 => {
                    let outcomes: Vec<Outcome> = batch.events.iter().map(|e| e.outcome).collect();
                    assert_eq!(outcomes, sample.outcomes, "{what}");
                    assert!(batch.rejected.is_empty(), "{what}: {:?}", batch.rejected);
                    assert!(batch.events.iter().all(|e| e.status_recognised), "{what}: a documented word");
                }
                Err(error) => assert_eq!(error.status().as_u16(), sample.status, "{what}: {error}"),
                Ok(batch) => {
                    panic!("{what}: read as {} receipts, expected {}", batch.events.len(), sample.status)
                }
            }
        }
    }
}

#[test]
fn every_status_word_has_its_listed_outcome_and_pending_words_an_order() {
    for entry in REGISTRY {
        let mut ranks = BTreeSet::new();
        for status in entry.statuses() {
            let what = format!("{} {}", entry.name(), status.word);
            assert_eq!(entry.outcome_of(status.word), Some(status.outcome), "{what}");
            assert_eq!(
                status.pending_rank > 0,
                status.outcome == Outcome::Pending,
                "{what}: rank only when pending"
            );
            ranks.insert(status.pending_rank);
        }
        assert_eq!(
            entry.outcome_of("mystery_word"),
            None,
            "{}: an unknown word is none of these",
            entry.name()
        );
        let pending: Vec<u8> = ranks.into_iter().filter(|r| *r > 0).collect();
        assert!(!pending.is_empty(), "{}: its pending steps are ranked", entry.name());
        assert_eq!(pending, (1..=pending.len() as u8).collect::<Vec<_>>(), "{}: ranks 1..n", entry.name());
    }
}

#[test]
fn the_event_schema_names_every_provider() {
    let schema: serde_json::Value =
        serde_json::from_str(&repo_file("shared/schema/receipt-event.v1.json")).unwrap();
    let names: Vec<&str> = schema["properties"]["provider"]["enum"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    let listed: Vec<&str> = REGISTRY.iter().map(|e| e.provider().as_str()).collect();
    assert_eq!(names, listed, "shared/schema/receipt-event.v1.json: provider enum");
}

/// `dlr_pending_rank` as the registry ranks the pending words.
fn pending_rank_function() -> String {
    let mut sql = String::from(
        "CREATE OR REPLACE FUNCTION dlr_pending_rank(provider TEXT, status TEXT) RETURNS INTEGER\n\
         LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$\n    SELECT CASE provider\n",
    );
    for entry in REGISTRY {
        sql.push_str(&format!("        WHEN '{}' THEN CASE lower(status)\n", entry.provider().as_str()));
        for status in entry.statuses().iter().filter(|s| s.pending_rank > 0) {
            sql.push_str(&format!(
                "            WHEN '{}' THEN {}\n",
                status.word.to_ascii_lowercase(),
                status.pending_rank
            ));
        }
        sql.push_str("            ELSE 0 END\n");
    }
    sql.push_str("        ELSE 0 END\n$$;\n");
    sql
}

/// The ranks the newest migration that defines `dlr_pending_rank` installs.
fn migrated_ranks() -> (String, BTreeSet<(String, String, u8)>) {
    let dir = format!("{}/../worker/migrations", env!("CARGO_MANIFEST_DIR"));
    let mut files: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    let (file, text) = files
        .iter()
        .rev()
        .map(|f| (f.display().to_string(), std::fs::read_to_string(f).unwrap()))
        .find(|(_, text)| text.contains("FUNCTION dlr_pending_rank"))
        .unwrap();
    let mut ranks = BTreeSet::new();
    let mut provider = String::new();
    for line in text.lines().map(str::trim).filter(|l| !l.starts_with("--")) {
        let quoted = line.split('\'').nth(1).unwrap_or("");
        if line.ends_with("THEN CASE lower(status)") {
            provider = quoted.to_owned();
        } else if let Some(rank) = line.strip_prefix("WHEN '").and_then(|l| l.rsplit(' ').next()) {
            ranks.insert((provider.clone(), quoted.to_owned(), rank.parse().unwrap()));
        }
    }
    (file, ranks)
}

#[test]
fn the_worker_migration_installs_the_registry_pending_ranks() {
    let (file, migrated) = migrated_ranks();
    let listed: BTreeSet<(String, String, u8)> = REGISTRY
        .iter()
        .flat_map(|e| {
            e.statuses()
                .iter()
                .filter(|s| s.pending_rank > 0)
                .map(|s| (e.provider().as_str().to_owned(), s.word.to_ascii_lowercase(), s.pending_rank))
        })
        .collect();
    assert_eq!(
        migrated,
        listed,
        "{file} ranks other words than the registry: add a migration (existing databases take it at start-up) with\n{}",
        pending_rank_function()
    );
}

/// The README's "Providers: production checklist" table: one row per
/// provider, in registry order, with its route and every credential variable.
#[test]
fn the_readme_provider_table_follows_the_registry() {
    let readme = repo_file("README.md");
    let section = readme.split("## Providers: production checklist").nth(1).unwrap();
    let rows: Vec<Vec<&str>> = section
        .lines()
        .skip_while(|l| !l.starts_with("| provider |"))
        .skip(2)
        .take_while(|l| l.starts_with('|'))
        .map(|l| l.split(" | ").map(|c| c.trim_matches(|c: char| c == '|' || c.is_whitespace())).collect())
        .collect();
    let names: Vec<&str> = rows.iter().map(|r| r[0]).collect();
    let listed: Vec<&str> = REGISTRY.iter().map(|e| e.name()).collect();
    assert_eq!(names, listed, "README provider table rows");
    for (row, entry) in rows.iter().zip(REGISTRY) {
        let url = row[1].split('`').find(|part| part.contains("<host>")).unwrap_or("");
        let path = url.split_once("<host>").map_or("", |(_, path)| path).split(['#', '?']).next();
        assert_eq!(path, Some(entry.route().path), "README: {} row's URL", entry.name());
        for variable in entry.settings().credential_variables {
            assert!(row[3].contains(variable), "README: {} row does not name {variable}", entry.name());
        }
    }
    let contract = readme.split("## The HTTP contract").nth(1).unwrap();
    for entry in REGISTRY {
        assert!(
            contract.contains(&format!("`{}`", entry.route().path)),
            "HTTP contract: {}",
            entry.route().path
        );
    }
}

#[test]
fn the_quarantine_keeps_every_signature_header_and_the_account_tables_are_the_registry_ones() {
    let copied = copied_headers();
    for entry in REGISTRY {
        for name in entry.signature_headers() {
            assert!(copied.contains(name), "{name}");
            assert_eq!(*name, name.to_ascii_lowercase(), "header names are lower case");
        }
    }
    assert_eq!(
        account_tables(),
        [
            ("vonage", AccountKey::Field("api-key / JWT api_key")),
            ("twilio", AccountKey::Field("AccountSid")),
            ("telnyx", AccountKey::Field("data.payload.organization_id")),
            ("plivo", AccountKey::Field("ParentAuthID")),
            ("sinch", AccountKey::PathSegment),
            ("infobip", AccountKey::PathSegment),
        ]
    );
}
