//! Server-side printing: `Accept: application/json;as=Table;v=v1;g=meta.k8s.io` answers with a
//! `meta.k8s.io/v1` `Table` whose columns are the ones kube-apiserver's printers produce
//! (`pkg/printers/internalversion`), so `kubectl get` reads as it does upstream. Columns with
//! `priority: 1` are the `-o wide` ones. Resources without a printer get upstream's default
//! `Name` / `Created At` table.
//!
//! * `render`: the Table document, `Accept` negotiation, `includeObject`.
//! * `columns`: each resource's column definitions. `cells`, `pod`: each row's values.
//! * `duration`: upstream's human-readable ages.

mod cells;
mod columns;
mod duration;
mod lookup;
mod network;
mod pod;
mod render;

pub use duration::{age, human_duration};
pub use render::{Include, TABLE_TYPE, table, wanted};
