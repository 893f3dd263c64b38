//! aidos datasets: versioned, content-addressed training data.
//!
//! `aidos dataset push NAME PATH` = [`Source::detect`] → [`ingest`] (parse + validate IDX / CSV / NPY into a
//! [`Table`] in memory, then write blobs) → a [`DatasetManifest`] the cluster commits (assigning `version`).
//! Training reads it back with [`load_split`]; [`diff`] compares two versions; [`describe`] summarises one.
//!
//! # Storage layout (all in the [`aidos_blob::BlobStore`], named by BLAKE3)
//! - **Feature chunks** (`feature_chunks`): rows `[c·chunk_rows, …)` of the dataset, f32 little endian,
//!   row-major, `rows × prod(row_shape) × 4` bytes each; NaN (missing values) stored as the canonical `f32::NAN`.
//!   All chunks hold `chunk_rows` rows (default 4096) except the last.
//! - **Label chunks** (`label_chunks`): the same row ranges, one u32 little endian per row.
//! - **Row hashes** (`row_hashes_blob`): 16 bytes per row in row order, the first 16 bytes of
//!   BLAKE3(row's feature bytes ‖ label bytes); used for duplicate counting and [`diff`].
//! - **Content hash** (`content_hash`, not a blob): BLAKE3 hex over the row shape, dtype and the chunk ids in
//!   order (see [`content_hash`]): the same content ingested twice gives the same chunks and the same hash.
//! - **Splits**: named contiguous row ranges `[start, end)` in stored order (see [`SplitSpec`]); default `all`.
//!
//! # Limits
//! Inputs (each file, each decompressed gzip stream, the decoded table) at most [`MAX_INPUT_BYTES`] (8 GiB);
//! a chunk's features at most [`MAX_CHUNK_BYTES`] (1 GiB); names `[A-Za-z0-9._-]{1,64}`.
//!
//! # Failure
//! Every input problem is a [`DatasetError`] naming the file and where (byte offset, line/column), and expected vs
//! found. Nothing is written to the store unless the whole input parsed and validated.

mod csv;
mod describe;
mod diff;
mod error;
mod idx;
mod ingest;
mod load;
mod npy;
mod source;
mod split;
mod table;

pub use aidos_api::v1::{ChunkRef, DatasetManifest, DatasetStats, FeatureStats, Split};

pub use crate::csv::read_csv;
pub use crate::describe::describe;
pub use crate::diff::{DiffReport, diff};
pub use crate::error::{DatasetError, Result};
pub use crate::idx::{Idx, IdxProblem, parse_idx, read_idx};
pub use crate::ingest::{
    DEFAULT_CHUNK_ROWS, IngestOptions, ROW_HASH_BYTES, content_hash, ingest, ingest_table, row_hash, valid_name,
    validate_name,
};
pub use crate::load::{LoadedSplit, load_all, load_rows, load_split};
pub use crate::npy::{encode_npy, read_npy};
pub use crate::source::Source;
pub use crate::split::{SplitSize, SplitSpec, resolve_splits};
pub use crate::table::{MAX_CHUNK_BYTES, MAX_INPUT_BYTES, Table, row_len};
