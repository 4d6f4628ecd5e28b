//! Reads: list and watch, from the watch cache, as JSON or as a Table.

use ::http::{HeaderMap, Response};
use serde_json::{Value, json};

use crate::api::{ApiError, selector};
use crate::server::http::{self, Body};
use crate::server::table;
use crate::server::watch::{self, WatchParams};
use crate::storage::{ListOptions, ResourceVersionMatch, StorageError, WatchOptions};

use super::Call;

/// Whether the client asked for a Table, and what its rows should carry.
pub(super) fn table_request(call: &Call<'_>, headers: &HeaderMap) -> Option<table::Include> {
    let accept = headers.get(::http::header::ACCEPT)?.to_str().ok()?;
    table::wanted(accept).then(|| table::Include::parse(call.query.get("includeObject")))
}

/// The label and field selectors of a request as one predicate.
pub(super) fn predicate(call: &Call<'_>) -> Result<crate::storage::Predicate, ApiError> {
    let labels = selector::parse_labels(call.query.get("labelSelector").unwrap_or(""))?;
    let fields = selector::parse_fields(
        call.query.get("fieldSelector").unwrap_or(""),
        call.info.kind,
    )?;
    Ok(selector::predicate(labels, fields))
}

fn list_options(call: &Call<'_>) -> Result<ListOptions, ApiError> {
    let resource_version_match = match call.query.get("resourceVersionMatch").unwrap_or("") {
        "" => ResourceVersionMatch::Unset,
        "NotOlderThan" => ResourceVersionMatch::NotOlderThan,
        "Exact" => ResourceVersionMatch::Exact,
        other => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: {other:?}: supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    };
    Ok(ListOptions {
        resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
        resource_version_match,
        limit: call.query.int("limit")?.unwrap_or(0).max(0),
        continue_token: call
            .query
            .get("continue")
            .filter(|token| !token.is_empty())
            .map(str::to_owned),
        predicate: predicate(call)?,
    })
}

pub(super) async fn list(call: &Call<'_>, headers: &HeaderMap) -> Result<Response<Body>, ApiError> {
    let options = list_options(call)?;
    let prefix = call.prefix()?;
    let cache = call.server.cache(call.info)?;
    let result = cache
        .list(&prefix, &options)
        .await
        .map_err(|error| ApiError::from_storage(error, call.target("")))?;
    let mut metadata = json!({"resourceVersion": result.resource_version.to_string()});
    if let Some(token) = &result.continue_token {
        metadata["continue"] = json!(token);
    }
    if let Some(remaining) = result.remaining_item_count {
        metadata["remainingItemCount"] = json!(remaining);
    }
    let items: Vec<Value> = result.items.iter().map(|item| (**item).clone()).collect();
    if let Some(include) = table_request(call, headers) {
        let table = table::table(call.info, &items, metadata, include, true);
        return Ok(http::json_with_type(200, &table, table::TABLE_TYPE));
    }
    let list = json!({
        "kind": call.info.list_kind,
        "apiVersion": call.info.api_version(),
        "metadata": metadata,
        "items": items,
    });
    Ok(http::json(200, &list))
}

pub(super) async fn watch(
    call: &Call<'_>,
    headers: &HeaderMap,
) -> Result<Response<Body>, ApiError> {
    let predicate = predicate(call)?;
    let prefix = call.prefix()?;
    let cache = call.server.cache(call.info)?;
    let bookmarks = call.query.flag("allowWatchBookmarks");
    let initial = call.query.flag("sendInitialEvents");
    let mut params = WatchParams::new(call.info, call.query.int("timeoutSeconds")?, initial);
    params.table = table_request(call, headers).map(|include| (call.info.clone(), include));
    let storage = |error| ApiError::from_storage(error, call.target(""));
    if initial {
        // The state as of a list, then every change after it, with the end of the initial
        // events marked by a bookmark (the WatchList protocol).
        let listed = cache
            .list(
                &prefix,
                &ListOptions {
                    resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
                    predicate: predicate.clone(),
                    ..ListOptions::default()
                },
            )
            .await
            .map_err(storage)?;
        let stream = cache
            .watch(
                &prefix,
                &WatchOptions {
                    resource_version: listed.resource_version.to_string(),
                    predicate,
                    bookmarks,
                },
            )
            .await
            .map_err(storage)?;
        let replay = listed
            .items
            .into_iter()
            .map(crate::storage::WatchEvent::Added)
            .collect();
        return Ok(watch::response(
            stream,
            params,
            replay,
            Some(listed.resource_version),
        ));
    }
    let started = cache
        .watch(
            &prefix,
            &WatchOptions {
                resource_version: call.query.get("resourceVersion").unwrap_or("").to_owned(),
                predicate,
                bookmarks,
            },
        )
        .await;
    match started {
        Ok(stream) => Ok(watch::response(stream, params, Vec::new(), None)),
        // Past parsing, a watch fails as upstream's cacher does: a 200 whose only event is
        // an ERROR (clients relist on its 410 rather than retrying the same version).
        Err(error @ StorageError::InvalidResourceVersion { .. }) => Err(storage(error)),
        Err(error) => Ok(watch::error_response(&storage(error))),
    }
}
