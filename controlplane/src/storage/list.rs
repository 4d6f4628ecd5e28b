//! Lists straight from etcd: [`Store::list`], with `limit` / `continue` pagination.
//!
//! Follows upstream's `GetList`: the first page reads at the latest revision (or the one asked
//! for), and its continue token pins every later page to that same revision, so the pages
//! together are one consistent snapshot however many writes happen between them. When a
//! predicate filters items out, the page is refilled from etcd with a doubling limit. A page
//! whose revision has since been compacted fails with [`StorageError::Expired`].

use std::sync::Arc;

use etcd_client::GetOptions;
use serde_json::Value;

use super::continue_token;
use super::object;
use super::{KeyPrefix, Predicate, StorageError, Store};

/// Largest page size the refill loop grows to (upstream's `maxLimit`).
const MAX_REFILL_LIMIT: i64 = 10_000;

/// How a list's resourceVersion is to be read (`resourceVersionMatch`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ResourceVersionMatch {
    /// Legacy semantics: `""` is the latest, `"0"` anything, `"N"` not older than N (and
    /// exactly N when paginating with `limit`).
    #[default]
    Unset,
    NotOlderThan,
    Exact,
}

/// Parameters of a list (`ListOptions` of the API, minus selectors, which become `predicate`).
#[derive(Debug, Clone, Default)]
pub struct ListOptions {
    pub resource_version: String,
    pub resource_version_match: ResourceVersionMatch,
    /// Page size; 0 for no limit.
    pub limit: i64,
    pub continue_token: Option<String>,
    pub predicate: Predicate,
}

/// One page of a list.
#[derive(Debug, Clone)]
pub struct ListResult {
    /// Items in key order, each with its own resourceVersion.
    pub items: Vec<Arc<Value>>,
    /// The revision the list was read at (`ListMeta.resourceVersion`).
    pub resource_version: i64,
    /// Token for the next page, if there is one.
    pub continue_token: Option<String>,
    /// Items after this page, when known (only without a filter).
    pub remaining_item_count: Option<i64>,
}

/// A page with each item's key, for the watch cache's initial fill.
pub(crate) struct KeyedPage {
    pub entries: Vec<(String, Arc<Value>)>,
    pub resource_version: i64,
    pub continue_token: Option<String>,
    pub remaining_item_count: Option<i64>,
}

impl Store {
    /// Lists the objects under `prefix`.
    pub async fn list(
        &self,
        prefix: &KeyPrefix,
        options: &ListOptions,
    ) -> Result<ListResult, StorageError> {
        let page = self.list_keyed(prefix, options).await?;
        Ok(ListResult {
            items: page.entries.into_iter().map(|(_, item)| item).collect(),
            resource_version: page.resource_version,
            continue_token: page.continue_token,
            remaining_item_count: page.remaining_item_count,
        })
    }

    pub(crate) async fn list_keyed(
        &self,
        prefix: &KeyPrefix,
        options: &ListOptions,
    ) -> Result<KeyedPage, StorageError> {
        let from_revision = object::parse_resource_version(&options.resource_version)?;
        let paging = options.limit > 0;

        let mut start_key = prefix.as_str().to_owned();
        let mut read_revision = 0;
        let continuing = options.continue_token.is_some();
        if let Some(token) = &options.continue_token {
            if from_revision.is_some_and(|revision| revision != 0) {
                return Err(StorageError::InvalidContinue {
                    reason: "specifying resource version is not allowed when using continue"
                        .to_owned(),
                });
            }
            let continuation = continue_token::decode(token, prefix)?;
            start_key = continuation.start_key;
            read_revision = continuation.revision.unwrap_or(0);
        } else if let Some(revision) = from_revision {
            match options.resource_version_match {
                ResourceVersionMatch::NotOlderThan => {}
                ResourceVersionMatch::Exact if revision == 0 => {
                    return Err(StorageError::InvalidResourceVersion {
                        value: options.resource_version.clone(),
                    });
                }
                ResourceVersionMatch::Exact => read_revision = revision,
                ResourceVersionMatch::Unset => {
                    if paging && revision > 0 {
                        read_revision = revision;
                    }
                }
            }
        }

        let mut limit = options.limit;
        let mut items = Vec::new();
        let mut last_key: Option<Vec<u8>> = None;
        loop {
            let mut get = GetOptions::new().with_range(prefix.range_end());
            if paging {
                get = get.with_limit(limit);
            }
            if read_revision != 0 {
                get = get.with_revision(read_revision);
            }
            let response = self
                .client
                .kv_client()
                .get(start_key.as_bytes(), Some(get))
                .await
                .map_err(|source| {
                    interpret_list_error(
                        StorageError::etcd("list", prefix.as_str(), source),
                        prefix,
                        &start_key,
                        continuing,
                        if continuing {
                            read_revision
                        } else {
                            from_revision.unwrap_or(read_revision)
                        },
                    )
                })?;
            let header_revision = response.header().map_or(0, |header| header.revision());
            if let Some(minimum) = from_revision
                && options.continue_token.is_none()
                && minimum > header_revision
            {
                return Err(StorageError::TooLargeResourceVersion {
                    prefix: prefix.to_string(),
                    requested: minimum,
                    current: header_revision,
                });
            }
            if response.kvs().is_empty() && response.more() {
                return Err(StorageError::InvalidObject {
                    key: prefix.to_string(),
                    reason: "etcd returned no keys but said more remain".to_owned(),
                });
            }

            let mut has_more = response.more();
            for kv in response.kvs() {
                if paging && items.len() as i64 >= options.limit {
                    has_more = true;
                    break;
                }
                last_key = Some(kv.key().to_vec());
                let item = object::decode(kv.key(), kv.value(), kv.mod_revision())?;
                if options.predicate.matches(&item) {
                    items.push((
                        String::from_utf8_lossy(kv.key()).into_owned(),
                        Arc::new(item),
                    ));
                }
            }
            if read_revision == 0 {
                read_revision = header_revision;
            }

            let page_full = paging && items.len() as i64 >= options.limit;
            if !has_more || !paging || page_full {
                let continue_token = has_more
                    .then(|| last_key.as_deref().map(next_key))
                    .flatten()
                    .map(|next| continue_token::encode(&next, prefix, read_revision));
                let remaining_item_count = (continue_token.is_some()
                    && options.predicate.is_everything())
                .then(|| response.count() - options.limit);
                return Ok(KeyedPage {
                    entries: items,
                    resource_version: read_revision,
                    continue_token,
                    remaining_item_count,
                });
            }

            // The filter dropped items: fetch more, at the same revision, after the last key.
            limit = (limit * 2).min(MAX_REFILL_LIMIT).max(limit);
            if let Some(key) = &last_key {
                start_key = next_key(key);
            }
        }
    }
}

/// The smallest key after `key`.
fn next_key(key: &[u8]) -> String {
    let mut next = String::from_utf8_lossy(key).into_owned();
    next.push('\0');
    next
}

/// Upstream's `interpretListError`: a compacted revision is `Expired`, and for a continued
/// list the error carries a token that goes on at the latest revision instead.
fn interpret_list_error(
    error: StorageError,
    prefix: &KeyPrefix,
    start_key: &str,
    continuing: bool,
    requested: i64,
) -> StorageError {
    match error {
        StorageError::Expired { .. } => StorageError::Expired {
            prefix: prefix.to_string(),
            requested,
            oldest: None,
            inconsistent_continue: continuing
                .then(|| continue_token::encode(start_key, prefix, -1)),
        },
        StorageError::Etcd { ref source, .. }
            if source
                .to_string()
                .contains("required revision is a future revision") =>
        {
            StorageError::TooLargeResourceVersion {
                prefix: prefix.to_string(),
                requested,
                current: 0,
            }
        }
        other => other,
    }
}
