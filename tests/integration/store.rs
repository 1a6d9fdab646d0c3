//! The Milvus store against a real Milvus (Lite, or the standalone engine): `make test` starts
//! them and names them in MILVUS_TEST_URI.

use std::time::Duration;
use warden::config::{Consistency, MilvusConfig};
use warden::store::{ChunkRow, Store, StoreError};

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
        vector: unit(8, hot),
    }
}

#[tokio::test]
#[ignore = "needs Milvus (MILVUS_TEST_URI); `make test` runs it"]
async fn chunks_are_stored_searched_within_a_tenant_and_deleted() {
    let store = store().await;
    let name = unique("store");
    store.create(&name, 8).await.unwrap();
    assert!(matches!(
        store.create(&name, 8).await,
        Err(StoreError::Exists(_))
    ));
    let inserted = store
        .insert(
            &name,
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
