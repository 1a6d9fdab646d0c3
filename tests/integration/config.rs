use std::path::Path;
use warden::config::{Config, ConfigError, Fusion, MapEnv, RetrievalMode};

const VALID: &str = r#"
[server]
listen = "127.0.0.1:8080"

[backends.local-ollama]
kind = "ollama"
base_url = "http://127.0.0.1:11434"

[backends.vllm]
kind = "openai"
base_url = "http://127.0.0.1:8000/v1"
api_key = "env:VLLM_API_KEY"

[[models]]
id = "llama3.2"
targets = [{ backend = "local-ollama", model = "llama3.2:1b" }, { backend = "vllm", model = "meta-llama/Llama-3.2-1B-Instruct" }]
"#;

fn env() -> MapEnv {
    MapEnv::default().with("VLLM_API_KEY", "sk-test-secret-value")
}

fn parse(text: &str, env: &MapEnv) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("config/warden.toml"), env)
}

fn error(text: &str) -> ConfigError {
    parse(text, &env()).expect_err("config should be rejected")
}

#[test]
fn the_shipped_example_config_is_valid() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/warden.toml");
    let config = Config::load(&path, &MapEnv::default()).unwrap_or_else(|e| panic!("{e}"));
    assert!(!config.models.is_empty());
    assert_eq!(
        config.retrieval.template,
        warden::config::DEFAULT_TEMPLATE,
        "the example spells out the default template"
    );
}

#[test]
fn a_valid_config_resolves_secrets_without_showing_them() {
    let config = parse(VALID, &env()).unwrap();
    let vllm = config.backends.iter().find(|b| b.name == "vllm").unwrap();
    assert_eq!(
        vllm.api_key.as_ref().unwrap().expose(),
        "sk-test-secret-value"
    );
    assert!(!format!("{config:?}").contains("sk-test-secret-value"));
    let printed = config.effective_toml().unwrap();
    assert!(printed.contains("env:VLLM_API_KEY"));
    assert!(!printed.contains("sk-test-secret-value"));
    assert_eq!(config.models[0].targets.len(), 2);
}

#[test]
fn an_unknown_key_is_named_with_its_path() {
    let err = error(&VALID.replace("kind = \"ollama\"", "kind = \"ollama\"\nbase_ulr = \"x\""));
    assert_eq!(err.key.as_deref(), Some("backends.local-ollama.base_ulr"));
    let text = err.to_string();
    assert!(
        text.starts_with("config/warden.toml: backends.local-ollama.base_ulr: unknown field"),
        "{text}"
    );
    let err = error(&format!("{VALID}\n[surprise]\nx = 1\n"));
    assert_eq!(err.key.as_deref(), Some("surprise"));
}

#[test]
fn a_wrong_type_is_named_with_its_path() {
    let err = error(&VALID.replace(
        "listen = \"127.0.0.1:8080\"",
        "listen = \"127.0.0.1:8080\"\nmax_body_bytes = \"big\"",
    ));
    assert_eq!(err.key.as_deref(), Some("server.max_body_bytes"));
    assert!(err.message.contains("invalid type"), "{err}");
    let err = error(&VALID.replace("kind = \"openai\"", "kind = \"gemini\""));
    assert_eq!(err.key.as_deref(), Some("backends.vllm.kind"));
}

#[test]
fn bad_urls_addresses_and_references_are_rejected() {
    let err = error(&VALID.replace("http://127.0.0.1:11434", "127.0.0.1:11434"));
    assert_eq!(err.key.as_deref(), Some("backends.local-ollama.base_url"));
    let err = error(&VALID.replace("http://127.0.0.1:11434", "ftp://host"));
    assert_eq!(err.key.as_deref(), Some("backends.local-ollama.base_url"));
    let err = error(&VALID.replace("127.0.0.1:8080", "localhost"));
    assert_eq!(err.key.as_deref(), Some("server.listen"));
    let err = error(&VALID.replace("backend = \"vllm\"", "backend = \"vlm\""));
    assert_eq!(err.key.as_deref(), Some("models[0].targets[1].backend"));
    assert!(err.message.contains("unknown backend `vlm`"));
}

#[test]
fn secrets_must_be_references_to_set_variables() {
    let err = error(&VALID.replace("env:VLLM_API_KEY", "sk-inline-key"));
    assert_eq!(err.key.as_deref(), Some("backends.vllm.api_key"));
    assert!(
        !err.to_string().contains("sk-inline-key"),
        "the error must not echo a secret"
    );
    let err = parse(VALID, &MapEnv::default()).unwrap_err();
    assert!(err.message.contains("VLLM_API_KEY"));
    assert!(err.message.contains("not set"));
}

#[test]
fn invalid_toml_names_the_line() {
    let err = error("[server]\nlisten = \"127.0.0.1:8080\"\nmax_body_bytes = = 3\n");
    assert!(err.message.contains("line 3"), "{err}");
}

#[test]
fn environment_overrides_apply_and_are_named_in_errors() {
    let env = env()
        .with("WARDEN_SERVER__LISTEN", "0.0.0.0:9999")
        .with("WARDEN_SERVER__ALLOW_ANONYMOUS", "true")
        .with(
            "WARDEN_BACKENDS__LOCAL_OLLAMA__TIMEOUTS__FIRST_TOKEN_MS",
            "1234",
        );
    let config = parse(VALID, &env).unwrap();
    assert_eq!(config.server.listen.to_string(), "0.0.0.0:9999");
    let ollama = config
        .backends
        .iter()
        .find(|b| b.name == "local-ollama")
        .unwrap();
    assert_eq!(ollama.timeouts.first_token.as_millis(), 1234);

    let env = env.with("WARDEN_SERVER__LISTEN", "nowhere");
    let err = parse(VALID, &env).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("server.listen"));
    assert_eq!(err.set_by.as_deref(), Some("WARDEN_SERVER__LISTEN"));
    assert!(
        err.to_string()
            .contains("set by environment variable WARDEN_SERVER__LISTEN")
    );

    let env = MapEnv::default()
        .with("VLLM_API_KEY", "x")
        .with("WARDEN_SERVER__LISTN", "0.0.0.0:1");
    let err = parse(VALID, &env).unwrap_err();
    assert_eq!(err.key.as_deref(), Some("server.listn"));
}

#[test]
fn models_must_be_unique_and_served() {
    let err = error(&format!(
        "{VALID}\n[[models]]\nid = \"llama3.2\"\ntargets = [{{ backend = \"vllm\", model = \"x\" }}]\n"
    ));
    assert_eq!(err.key.as_deref(), Some("models[1].id"));
    let err = error(&VALID.replace(
        "targets = [{ backend = \"local-ollama\", model = \"llama3.2:1b\" }, { backend = \"vllm\", model = \"meta-llama/Llama-3.2-1B-Instruct\" }]",
        "targets = []",
    ));
    assert_eq!(err.key.as_deref(), Some("models[0].targets"));
}

#[test]
fn retrieval_modes_and_fusion_are_checked_with_their_keys() {
    let with = |retrieval: &str| format!("{VALID}\n[retrieval]\n{retrieval}\n");
    let config = parse(
        &with("mode = \"keyword\"\nfusion = \"weighted\"\ndense_weight = 0.3\nkeyword_weight = 0.7\ncollection_modes = { manuals = \"dense\" }"),
        &env(),
    )
    .unwrap();
    let retrieval = &config.retrieval;
    assert_eq!(retrieval.mode_of("manuals"), RetrievalMode::Dense);
    assert_eq!(retrieval.mode_of("other"), RetrievalMode::Keyword);
    assert_eq!(
        retrieval.fusion,
        Fusion::Weighted {
            dense: 0.3,
            keyword: 0.7
        }
    );
    for (kind, expected) in [
        (
            "min_max",
            Fusion::MinMax {
                dense: 0.3,
                keyword: 0.7,
            },
        ),
        (
            "dbsf",
            Fusion::Dbsf {
                dense: 0.3,
                keyword: 0.7,
            },
        ),
    ] {
        let config = parse(
            &with(&format!(
                "fusion = \"{kind}\"\ndense_weight = 0.3\nkeyword_weight = 0.7"
            )),
            &env(),
        )
        .unwrap();
        assert_eq!(config.retrieval.fusion, expected);
    }
    let err = error(&with("fusion = \"borda\""));
    assert_eq!(err.key.as_deref(), Some("retrieval.fusion"));
    let defaults = parse(VALID, &env()).unwrap().retrieval;
    assert_eq!(defaults.mode, RetrievalMode::Hybrid);
    assert_eq!(
        defaults.fusion,
        Fusion::MinMax {
            dense: 0.5,
            keyword: 0.5
        }
    );

    let err = error(&with("mode = \"semantic\""));
    assert_eq!(err.key.as_deref(), Some("retrieval.mode"));
    let err = error(&with("collection_modes = { manuals = \"fuzzy\" }"));
    assert_eq!(
        err.key.as_deref(),
        Some("retrieval.collection_modes.manuals")
    );
    let err = error(&with("collection_modes = { \"bad-name\" = \"dense\" }"));
    assert_eq!(
        err.key.as_deref(),
        Some("retrieval.collection_modes.bad-name")
    );
    let err = error(&with("keyword_weight = 1.5"));
    assert_eq!(err.key.as_deref(), Some("retrieval.keyword_weight"));
    let err = error(&with("lexical_shift = -0.1"));
    assert_eq!(err.key.as_deref(), Some("retrieval.lexical_shift"));
    let err = error(&with("rrf_k = 0"));
    assert_eq!(err.key.as_deref(), Some("retrieval.rrf_k"));
}

#[test]
fn a_shared_limits_store_is_checked_key_by_key() {
    let with = |limits: &str| format!("{VALID}\n{limits}");
    let cases = [
        (
            "[limits]\nstore = \"redis\"\n",
            "limits.redis",
            "needs a [limits.redis] section",
        ),
        (
            "[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\n",
            "limits.redis",
            "only read with limits.store = \"redis\"",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://:hunter2@127.0.0.1:6379\"\n",
            "limits.redis.url",
            "never written in the URL",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"http://127.0.0.1:6379\"\n",
            "limits.redis.url",
            "the scheme must be redis://",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\ncluster = [\"redis://127.0.0.1:7000\", \"redis://127.0.0.1:7001/x\"]\n",
            "limits.redis.cluster[1]",
            "`redis://127.0.0.1:7001/x`",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\ncluster = [\"redis://127.0.0.1:7000\"]\n",
            "limits.redis.url",
            "exactly one of `url`",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nsentinels = [\"redis://127.0.0.1:26379\"]\n",
            "limits.redis.sentinel_service",
            "the name of the service",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\nsentinel_service = \"primary\"\n",
            "limits.redis.sentinel_service",
            "only read with `sentinels`",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\npassword = \"hunter2\"\n",
            "limits.redis.password",
            "references",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\npassword = \"env:REDIS_PASSWORD\"\n",
            "limits.redis.password",
            "REDIS_PASSWORD",
        ),
        (
            "[limits]\nstore = \"redis\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\nlease_ttl_ms = 10\n",
            "limits.redis.lease_ttl_ms",
            "at least 1000",
        ),
        (
            "[limits]\nstore = \"redis\"\non_store_unavailable = \"queue\"\n[limits.redis]\nurl = \"redis://127.0.0.1:6379\"\n",
            "limits.on_store_unavailable",
            "queue",
        ),
    ];
    for (limits, key, message) in cases {
        let err = error(&with(limits));
        assert_eq!(err.key.as_deref(), Some(key), "{limits}: {err}");
        assert!(err.to_string().contains(message), "{limits}: {err}");
        assert!(!err.to_string().contains("hunter2"), "{err}");
    }

    let config = parse(
        &with("[limits]\nstore = \"redis\"\non_store_unavailable = \"fail\"\n[limits.redis]\nurl = \"rediss://cache.internal:6380/2\"\nusername = \"warden\"\npassword = \"env:REDIS_PASSWORD\"\n"),
        &env().with("REDIS_PASSWORD", "s3cret-redis"),
    )
    .unwrap();
    let shared = config.shared_limits.as_ref().unwrap();
    assert_eq!(shared.on_unavailable, warden::config::StoreFallback::Fail);
    assert_eq!(shared.password.as_ref().unwrap().expose(), "s3cret-redis");
    assert_eq!(shared.timeout, std::time::Duration::from_millis(100));
    let printed = config.effective_toml().unwrap();
    assert!(printed.contains("env:REDIS_PASSWORD") && !printed.contains("s3cret-redis"));
}

#[test]
fn stored_responses_are_bounded_and_checked_key_by_key() {
    let with = |section: &str| format!("{VALID}\n{section}");
    let defaults = parse(VALID, &env()).unwrap().responses;
    assert!(defaults.store);
    assert_eq!(defaults.max_stored, 1000);
    assert_eq!(defaults.max_stored_bytes, 64 * 1024 * 1024);
    assert_eq!(defaults.ttl, std::time::Duration::from_secs(3600));
    for (section, key) in [
        ("[responses]\nmax_stored = 0\n", "responses.max_stored"),
        ("[responses]\nttl_seconds = 0\n", "responses.ttl_seconds"),
        (
            "[responses]\nmax_stored_mib = 0\n",
            "responses.max_stored_mib",
        ),
        ("[responses]\nkeep = true\n", "responses.keep"),
    ] {
        let err = error(&with(section));
        assert_eq!(err.key.as_deref(), Some(key), "{section}: {err}");
    }
    let off = parse(
        &with("[responses]\nstore = false\nmax_stored = 0\n"),
        &env(),
    )
    .unwrap();
    assert!(
        !off.responses.store,
        "bounds are not read while storing is off"
    );
}

#[test]
fn the_console_needs_the_admin_routes_it_works_through() {
    let err = error(&format!("{VALID}\n[console]\nenabled = true\n"));
    assert_eq!(err.key.as_deref(), Some("console.enabled"), "{err}");
    assert!(err.to_string().contains("admin"), "{err}");
    let config = parse(
        &format!(
            "{}\n[console]\nenabled = true\n",
            VALID.replace(
                "[server]\n",
                "[server]\nadmin_token = \"env:ADMIN_TOKEN\"\n"
            )
        ),
        &env().with("ADMIN_TOKEN", "t0ken"),
    );
    assert!(config.unwrap().console);
}
