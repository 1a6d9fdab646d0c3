//! The knowledge base over HTTP, for admin callers: collections, documents (raw text, a URL, or
//! an uploaded file). The `warden` CLI does the same through the same module.

use axum::Json;
use axum::body::Bytes;
use axum::extract::{FromRequestParts, Path, Query};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use std::sync::Arc;

use crate::error::ApiError;
use crate::knowledge::ingest::text::{Format, extract, format_of};
use crate::knowledge::store::{StoreError, valid_collection_name};
use crate::knowledge::{Document, Knowledge, KnowledgeError, doc_id_for};
use crate::server::auth::Caller;
use crate::server::extract::JsonBody;
use crate::server::state::{AppState, SharedState};

/// An admin caller: a key with `admin = true`, or the `server.admin_token`.
pub struct Admin(pub Caller);

impl FromRequestParts<SharedState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        shared: &SharedState,
    ) -> Result<Self, Self::Rejection> {
        // Same origin only: a page of another site cannot drive the admin routes from a
        // browser that holds a token (browsers say where a request comes from).
        if parts
            .headers
            .get("sec-fetch-site")
            .is_some_and(|site| site != "same-origin" && site != "none")
        {
            return Err(ApiError::Forbidden {
                message: "admin routes answer requests from this origin only".to_owned(),
            });
        }
        let Ok(state) = AppState::from_request_parts(parts, shared).await;
        let caller = parts
            .extensions
            .get::<Caller>()
            .cloned()
            .unwrap_or_else(Caller::anonymous);
        if caller.admin {
            return Ok(Admin(caller));
        }
        let enabled =
            state.config.server.admin_token.is_some() || state.access.keys.iter().any(|k| k.admin);
        if !enabled {
            return Err(ApiError::Forbidden {
                message: "admin routes are disabled: configure an admin key or server.admin_token"
                    .to_owned(),
            });
        }
        if caller.name == "anonymous" {
            Err(ApiError::Unauthorized)
        } else {
            Err(ApiError::Forbidden {
                message: "this key may not use the knowledge-base admin routes".to_owned(),
            })
        }
    }
}

fn knowledge(state: &AppState) -> Result<&Arc<Knowledge>, ApiError> {
    state.knowledge.as_ref().ok_or_else(|| ApiError::InvalidRequest {
        message: "the knowledge base is not enabled on this Warden: its config needs [embeddings] and [milvus]".to_owned(),
        param: None,
        code: Some("retrieval_disabled"),
    })
}

/// How knowledge-base failures reach the client.
pub fn knowledge_error(err: KnowledgeError) -> ApiError {
    match err {
        KnowledgeError::Store(StoreError::NoCollection(name)) => ApiError::NotFound {
            message: format!("The collection `{name}` does not exist."),
            param: Some("collection".to_owned()),
            code: "collection_not_found",
        },
        KnowledgeError::Store(StoreError::Unavailable(detail)) => {
            tracing::warn!(%detail, "Milvus failed");
            ApiError::Unavailable {
                message: "the knowledge base (Milvus) is unavailable; try again later".to_owned(),
                code: "retrieval_unavailable",
            }
        }
        KnowledgeError::Embed(err) => ApiError::Unavailable {
            message: format!("the embedding model failed: {err}"),
            code: "embeddings_unavailable",
        },
        KnowledgeError::Store(err @ StoreError::DimensionMismatch { .. }) => {
            ApiError::InvalidRequest {
                message: err.to_string(),
                param: Some("collection".to_owned()),
                code: Some("dimension_mismatch"),
            }
        }
        other => ApiError::invalid(other.to_string(), None),
    }
}

/// The knowledge base, once `collection` is a valid name of a collection that exists with the
/// embedding model's dimension.
async fn existing_collection<'a>(
    state: &'a AppState,
    collection: &str,
) -> Result<&'a Arc<Knowledge>, ApiError> {
    checked_name(collection)?;
    let knowledge = knowledge(state)?;
    knowledge
        .store
        .check(collection, knowledge.embedder.dimension)
        .await
        .map_err(|e| knowledge_error(e.into()))?;
    Ok(knowledge)
}

fn checked_name(name: &str) -> Result<(), ApiError> {
    if valid_collection_name(name) {
        Ok(())
    } else {
        Err(ApiError::invalid(
            format!(
                "`{name}` is not a valid collection name (letters, digits and `_`, starting with a letter)"
            ),
            Some("name".to_owned()),
        ))
    }
}

pub async fn list(_: Admin, state: AppState) -> Result<Json<Value>, ApiError> {
    let knowledge = knowledge(&state)?;
    let names = knowledge
        .store
        .list()
        .await
        .map_err(|e| knowledge_error(e.into()))?;
    let mut data = Vec::with_capacity(names.len());
    for name in names {
        // Collections Warden did not make are listed without a dimension.
        let dimension = knowledge
            .store
            .describe(&name)
            .await
            .ok()
            .map(|i| i.dimension);
        data.push(json!({"object": "collection", "name": name, "dimension": dimension}));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateCollection {
    pub name: String,
}

pub async fn create(
    _: Admin,
    state: AppState,
    JsonBody(body): JsonBody<CreateCollection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    checked_name(&body.name)?;
    let knowledge = knowledge(&state)?;
    let info = match knowledge
        .store
        .create(&body.name, knowledge.embedder.dimension)
        .await
    {
        Err(StoreError::Exists(name)) => {
            return Err(ApiError::InvalidRequest {
                message: format!("The collection `{name}` already exists."),
                param: Some("name".to_owned()),
                code: Some("collection_exists"),
            });
        }
        other => other.map_err(|e| knowledge_error(e.into()))?,
    };
    Ok((
        StatusCode::CREATED,
        Json(json!({"object": "collection", "name": info.name, "dimension": info.dimension})),
    ))
}

pub async fn drop_collection(
    _: Admin,
    state: AppState,
    Path(name): Path<String>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&name)?;
    let knowledge = knowledge(&state)?;
    knowledge
        .store
        .drop_collection(&name)
        .await
        .map_err(|e| knowledge_error(e.into()))?;
    Ok(Json(
        json!({"object": "collection", "name": name, "deleted": true}),
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NewDocument {
    /// Raw text of the document…
    #[serde(default)]
    pub text: Option<String>,
    /// …or a web page to fetch.
    #[serde(default)]
    pub url: Option<String>,
    /// Where the text came from; its document id derives from it. Default: a hash of the text.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    /// `text`, `markdown` or `html` (for `text`); default `text`.
    #[serde(default)]
    pub format: Option<String>,
    /// Create the collection when it does not exist.
    #[serde(default)]
    pub create: bool,
}

async fn ingest_one(
    knowledge: &Knowledge,
    tenant: &str,
    collection: &str,
    create: bool,
    document: Document,
) -> Result<Json<Value>, ApiError> {
    knowledge
        .collection(collection, create)
        .await
        .map_err(knowledge_error)?;
    let chunks = knowledge
        .ingest(collection, tenant, &document)
        .await
        .map_err(knowledge_error)?;
    Ok(Json(json!({
        "object": "document",
        "id": doc_id_for(&document.source),
        "source": document.source,
        "title": document.title,
        "collection": collection,
        "chunks": chunks,
    })))
}

pub async fn add_document(
    Admin(caller): Admin,
    state: AppState,
    Path(collection): Path<String>,
    JsonBody(body): JsonBody<NewDocument>,
) -> Result<Json<Value>, ApiError> {
    checked_name(&collection)?;
    let knowledge = knowledge(&state)?;
    let document = match (&body.text, &body.url) {
        (Some(text), None) => {
            let format = match body.format.as_deref() {
                None | Some("text") => Format::Text,
                Some("markdown") => Format::Markdown,
                Some("html") => Format::Html,
                Some(other) => {
                    return Err(ApiError::invalid(
                        format!("`format` must be text, markdown or html, not `{other}`"),
                        Some("format".to_owned()),
                    ));
                }
            };
            let extracted = extract(text, format);
            let source = body
                .source
                .clone()
                .unwrap_or_else(|| format!("text:{}", doc_id_for(text)));
            Document {
                source,
                title: body.title.clone().or(extracted.title),
                text: extracted.text,
            }
        }
        (None, Some(url)) => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(ApiError::invalid(
                    "`url` must be an http(s) URL",
                    Some("url".to_owned()),
                ));
            }
            knowledge
                .fetch(url)
                .await
                .map_err(|e| ApiError::invalid(e.to_string(), Some("url".to_owned())))?
        }
        _ => {
            return Err(ApiError::invalid(
                "give exactly one of `text` and `url`",
                Some("text".to_owned()),
            ));
        }
    };
    ingest_one(
        knowledge,
        &caller.tenant,
        &collection,
        body.create,
        document,
    )
    .await
}

#[derive(Debug, Deserialize)]
pub struct UploadQuery {
    /// The file's name or origin; its document id derives from it.
    pub source: String,
    #[serde(default)]
    pub create: bool,
}

/// A file uploaded as the request body; its content type (or the source's extension) says how
/// to read it.
pub async fn upload(
    Admin(caller): Admin,
    state: AppState,
    Path(collection): Path<String>,
    Query(query): Query<UploadQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    checked_name(&collection)?;
    let knowledge = knowledge(&state)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    let format = format_of(&query.source, content_type)
        .or_else(|| format_of(&query.source, None))
        .ok_or_else(|| {
            ApiError::invalid(
                "upload text, markdown or html (by content type or file extension)",
                Some("source".to_owned()),
            )
        })?;
    let text = String::from_utf8(body.to_vec())
        .map_err(|_| ApiError::invalid("the file is not UTF-8 text", None))?;
    let extracted = extract(&text, format);
    let document = Document {
        source: query.source.clone(),
        title: extracted.title,
        text: extracted.text,
    };
    ingest_one(
        knowledge,
        &caller.tenant,
        &collection,
        query.create,
        document,
    )
    .await
}

pub async fn delete_document(
    Admin(caller): Admin,
    state: AppState,
    Path((collection, doc_id)): Path<(String, String)>,
) -> Result<Json<Value>, ApiError> {
    let knowledge = existing_collection(&state, &collection).await?;
    let chunks = knowledge
        .store
        .delete_document(&collection, &caller.tenant, &doc_id)
        .await
        .map_err(|e| knowledge_error(e.into()))?;
    // Another tenant's document is as absent as one that never existed.
    if chunks == 0 {
        return Err(ApiError::NotFound {
            message: format!("No document `{doc_id}` in the collection `{collection}`."),
            param: Some("doc_id".to_owned()),
            code: "document_not_found",
        });
    }
    Ok(Json(
        json!({"object": "document", "id": doc_id, "collection": collection, "deleted": true, "chunks": chunks}),
    ))
}

/// `GET /v1/collections/{name}/documents`: the caller's tenant's documents, by source.
pub async fn list_documents(
    Admin(caller): Admin,
    state: AppState,
    Path(collection): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let knowledge = existing_collection(&state, &collection).await?;
    let (documents, truncated) = knowledge
        .store
        .list_documents(&collection, &caller.tenant)
        .await
        .map_err(|e| knowledge_error(e.into()))?;
    Ok(Json(
        json!({"object": "list", "collection": collection, "data": documents, "truncated": truncated}),
    ))
}
