//! The Milvus store against a real Milvus (Lite, or the standalone engine): `make test` starts
//! them and names them in MILVUS_TEST_URI.

use std::time::Duration;
use warden::config::{Consistency, Fusion, MilvusConfig, RetrievalMode};
use warden::knowledge::store::{Capabilities, ChunkRow, DenseIndex, Query, Store, StoreError};

pub fn milvus_uri() -> String {
    std::env::var("MILVUS_TEST_URI")
        .expect("MILVUS_TEST_URI must name a running Milvus (make test starts one)")
}

pub async fn store() -> Store {
    let config = MilvusConfig {
        uri: milvus_uri(),
        token: None,
        database: None,
        consistency: Consistency::Strong,
        timeout: Duration::from_secs(30),
    };
    Store::connect(&config).await.unwrap()
}

/// A collection name unique to one test run.
pub fn unique(name: &str) -> String {
    format!(
        "t_{name}_{}_{}",
        std::process::id(),
        uuid::Uuid::new_v4().simple().to_string().get(..8).unwrap()
    )
}

fn unit(dimension: usize, hot: usize) -> Vec<f32> {
    let mut v = vec![0.0; dimension];
    v[hot] = 1.0;
    v
}

fn row(doc: &str, index: i64, tenant: &str, hot: usize) -> ChunkRow {
    ChunkRow {
        doc_id: doc.to_owned(),
        chunk_index: index,
        text: format!("chunk {index} of {doc}"),
        source: format!("file:///{doc}.txt"),
        tenant: tenant.to_owned(),
        metadata: serde_json::json!({"title": doc}),
        keywords: format!("chunk {index} of {doc}"),
        vector: unit(8, hot),
    }
}

#[tokio::test]
#[ignore = "needs Milvus (MILVUS_TEST_URI); `make test` runs it"]
async fn chunks_are_stored_searched_within_a_tenant_and_deleted() {
    let store = store().await;
    let name = unique("store");
    let info = store.create(&name, 8).await.unwrap();
    assert!(matches!(
        store.create(&name, 8).await,
        Err(StoreError::Exists(_))
    ));
    let inserted = store
        .insert(
            &name,
            info.full_text,
            vec![
                row("a", 0, "t1", 0),
                row("a", 1, "t1", 1),
                row("b", 0, "t1", 2),
                row("c", 0, "t2", 0),
            ],
        )
        .await
        .unwrap();
    assert_eq!(inserted, 4);
    let hits = store
        .search(&name, "t1", &unit(8, 1), 2, 0.0)
        .await
        .unwrap();
    assert_eq!(hits[0].doc_id, "a");
    assert_eq!(hits[0].chunk_index, 1);
    assert_eq!(hits[0].text, "chunk 1 of a");
    assert!((hits[0].score - 1.0).abs() < 1e-4, "{hits:?}");
    let other_tenant = store
        .search(&name, "t2", &unit(8, 1), 5, 0.0)
        .await
        .unwrap();
    assert!(
        other_tenant.iter().all(|h| h.doc_id == "c"),
        "{other_tenant:?}"
    );
    assert_eq!(store.count_document(&name, "t1", "a").await.unwrap(), 2);
    store.delete_document(&name, "t1", "a").await.unwrap();
    assert_eq!(store.count_document(&name, "t1", "a").await.unwrap(), 0);
    let hits = store
        .search(&name, "t1", &unit(8, 1), 5, 0.0)
        .await
        .unwrap();
    assert!(hits.iter().all(|h| h.doc_id != "a"));
    assert!(matches!(
        store.check(&name, 384).await,
        Err(StoreError::DimensionMismatch {
            found: 8,
            expected: 384,
            ..
        })
    ));
    store.drop_collection(&name).await.unwrap();
    assert!(!store.has_collection(&name).await.unwrap());
}

/// Whether the server under test has full-text search, as `make test` knows it.
pub fn server_has_full_text() -> bool {
    match std::env::var("MILVUS_TEST_FULL_TEXT").as_deref() {
        Ok("yes") => true,
        Ok("no") => false,
        _ => panic!("MILVUS_TEST_FULL_TEXT must say yes or no (make test sets it)"),
    }
}

fn keyword_row(doc: &str, tenant: &str, text: &str, hot: usize) -> ChunkRow {
    ChunkRow {
        keywords: text.to_owned(),
        text: text.to_owned(),
        ..row(doc, 0, tenant, hot)
    }
}

#[tokio::test]
#[ignore = "needs Milvus (MILVUS_TEST_URI); `make test` runs it"]
async fn full_text_is_detected_and_keyword_and_hybrid_search_find_exact_terms() {
    let store = store().await;
    let expected = server_has_full_text();
    assert_eq!(store.full_text().await.unwrap(), expected);
    // The probe leaves nothing behind.
    let left = store.list().await.unwrap();
    assert!(
        !left.iter().any(|n| n.starts_with(store.probe_prefix())),
        "{left:?}"
    );
    let name = unique("fulltext");
    let info = store.create(&name, 8).await.unwrap();
    assert_eq!(info.full_text, expected);
    assert_eq!(store.describe(&name).await.unwrap().full_text, expected);
    store
        .insert(
            &name,
            info.full_text,
            vec![
                keyword_row(
                    "exit",
                    "t1",
                    "The tool exits with status 2 on ERR_CONFIG_SYNTAX.",
                    0,
                ),
                keyword_row(
                    "other",
                    "t1",
                    "Compression happens with the gzip program.",
                    1,
                ),
                keyword_row("foreign", "t2", "ERR_CONFIG_SYNTAX in tenant two.", 1),
            ],
        )
        .await
        .unwrap();
    if !expected {
        // Dense search works on such a collection; keyword search is refused by the server.
        let hits = store
            .search(&name, "t1", &unit(8, 1), 2, 0.0)
            .await
            .unwrap();
        assert_eq!(hits[0].doc_id, "other");
        store.drop_collection(&name).await.unwrap();
        return;
    }
    // The query vector points at `other`; the words point at `exit`.
    let query = Query {
        vector: &unit(8, 1),
        text: "ERR_CONFIG_SYNTAX status",
    };
    let rrf = Fusion::Rrf { k: 60 };
    let keyword = store
        .search_mode(&name, "t1", query, RetrievalMode::Keyword, 5, rrf)
        .await
        .unwrap();
    assert_eq!(
        keyword.len(),
        1,
        "only the chunk with the words: {keyword:?}"
    );
    assert_eq!(keyword[0].doc_id, "exit");
    assert!(
        keyword[0].score > 0.0,
        "BM25 scores are positive: {keyword:?}"
    );
    let dense = store
        .search_mode(&name, "t1", query, RetrievalMode::Dense, 5, rrf)
        .await
        .unwrap();
    assert_eq!(dense[0].doc_id, "other");
    let hybrid = store
        .search_mode(&name, "t1", query, RetrievalMode::Hybrid, 5, rrf)
        .await
        .unwrap();
    let docs: Vec<&str> = hybrid.iter().map(|h| h.doc_id.as_str()).collect();
    assert!(
        docs.contains(&"exit") && docs.contains(&"other"),
        "{hybrid:?}"
    );
    assert!(
        !docs.contains(&"foreign"),
        "tenant filter on both lists: {hybrid:?}"
    );
    // Weighted fusion favouring the keyword list puts the keyword match first.
    let weighted = Fusion::Weighted {
        dense: 0.1,
        keyword: 0.9,
    };
    let hybrid = store
        .search_mode(&name, "t1", query, RetrievalMode::Hybrid, 5, weighted)
        .await
        .unwrap();
    assert_eq!(hybrid[0].doc_id, "exit", "{hybrid:?}");
    // Fused by Warden from both lists' raw scores: the weights decide, the tenant filter holds.
    for (dense, keyword, first) in [(0.1, 0.9, "exit"), (0.9, 0.1, "other")] {
        for fusion in [
            Fusion::MinMax { dense, keyword },
            Fusion::Dbsf { dense, keyword },
        ] {
            let hybrid = store
                .search_mode(&name, "t1", query, RetrievalMode::Hybrid, 5, fusion)
                .await
                .unwrap();
            assert_eq!(hybrid[0].doc_id, first, "{fusion:?}: {hybrid:?}");
            assert!(
                hybrid.iter().all(|h| h.doc_id != "foreign"),
                "{fusion:?}: {hybrid:?}"
            );
            assert!(
                hybrid.iter().all(|h| (0.0..=1.0).contains(&h.score)),
                "{fusion:?}: {hybrid:?}"
            );
        }
    }
    // A compound identifier matches by a part the tokenizer would have kept inside it.
    let by_part = store
        .search_mode(
            &name,
            "t1",
            Query {
                vector: &unit(8, 1),
                text: "SYNTAX",
            },
            RetrievalMode::Keyword,
            5,
            rrf,
        )
        .await
        .unwrap();
    assert_eq!(
        by_part.first().map(|h| h.doc_id.as_str()),
        Some("exit"),
        "{by_part:?}"
    );
    // The English stemmer in the analyzer: "exiting" and "exits" meet at "exit" where the
    // server applies it (Milvus Lite 2.5.1); Milvus Lite 3.2.2 accepts it and matches words
    // as written.
    let stemmed = store
        .search_mode(
            &name,
            "t1",
            Query {
                vector: &unit(8, 1),
                text: "exiting",
            },
            RetrievalMode::Keyword,
            5,
            rrf,
        )
        .await
        .unwrap();
    let stems = std::env::var("MILVUS_TEST_ENGINE").as_deref() == Ok("lite25");
    assert_eq!(
        stemmed.iter().any(|h| h.doc_id == "exit"),
        stems,
        "{stemmed:?}"
    );
    // Deleting a document takes it out of both indexes.
    store.delete_document(&name, "t1", "exit").await.unwrap();
    let keyword = store
        .search_mode(&name, "t1", query, RetrievalMode::Keyword, 5, rrf)
        .await
        .unwrap();
    assert!(keyword.iter().all(|h| h.doc_id != "exit"), "{keyword:?}");
    let hybrid = store
        .search_mode(&name, "t1", query, RetrievalMode::Hybrid, 5, rrf)
        .await
        .unwrap();
    assert!(hybrid.iter().all(|h| h.doc_id != "exit"), "{hybrid:?}");
    store.drop_collection(&name).await.unwrap();
}

/// Which server is under test (`make test` sets MILVUS_TEST_ENGINE): what it accepts, as the
/// engine notes in scripts/milvus.sh say, and the dense index Warden should end up with.
fn server_expectations() -> (Capabilities, DenseIndex) {
    let (full_text, tenant_partition_key, index) = match std::env::var("MILVUS_TEST_ENGINE")
        .as_deref()
    {
        Ok("lite") => (true, true, DenseIndex::Hnsw),
        Ok("lite25") => (true, false, DenseIndex::Auto),
        Ok("standalone") => (false, true, DenseIndex::Hnsw),
        _ => panic!("MILVUS_TEST_ENGINE must say lite, lite25 or standalone (make test sets it)"),
    };
    let capabilities = Capabilities {
        full_text,
        tenant_partition_key,
    };
    (capabilities, index)
}

#[tokio::test]
#[ignore = "needs Milvus (MILVUS_TEST_URI); `make test` runs it"]
async fn the_schema_follows_what_the_server_accepts_and_tenants_stay_apart() {
    let store = store().await;
    let (expected, index) = server_expectations();
    assert_eq!(store.capabilities().await.unwrap(), expected);
    let name = unique("schema");
    let info = store.create(&name, 8).await.unwrap();
    assert_eq!(store.dense_index(), Some(index));
    assert_eq!(info.tenant_partition_key, expected.tenant_partition_key);
    assert_eq!(store.describe(&name).await.unwrap(), info);
    // Both tenants' chunks match the words and lie on the query vector: only the filter that
    // Warden adds keeps them apart, in every mode the collection has.
    let text = "ERR_CONFIG_SYNTAX exit status";
    store
        .insert(
            &name,
            info.full_text,
            vec![
                keyword_row("mine", "t1", text, 0),
                keyword_row("theirs", "t2", text, 0),
            ],
        )
        .await
        .unwrap();
    let modes: &[RetrievalMode] = if info.full_text {
        &[
            RetrievalMode::Dense,
            RetrievalMode::Keyword,
            RetrievalMode::Hybrid,
        ]
    } else {
        &[RetrievalMode::Dense]
    };
    let query = Query {
        vector: &unit(8, 0),
        text: "ERR_CONFIG_SYNTAX",
    };
    for &mode in modes {
        for (tenant, doc) in [("t1", "mine"), ("t2", "theirs")] {
            let hits = store
                .search_mode(&name, tenant, query, mode, 5, Fusion::Rrf { k: 60 })
                .await
                .unwrap();
            let docs: Vec<&str> = hits.iter().map(|h| h.doc_id.as_str()).collect();
            assert_eq!(docs, [doc], "{mode:?} for {tenant}");
        }
    }
    store.drop_collection(&name).await.unwrap();
}
