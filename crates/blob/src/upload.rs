//! The receiving side of a chunked upload (`aidos.v1.BlobService/Upload`), with no I/O: the first chunk announces
//! the blob's id and size, the following chunks carry bytes, and [`Upload::finish`] accepts only exactly as many
//! bytes as announced that hash to the announced id. It holds no bytes: it counts and hashes them as they pass on
//! to the store ([`crate::BlobStore::put_stream`]), which publishes the blob only after `finish` accepted it. The
//! service feeds it from the stream; the fuzz target `blob_upload` feeds it arbitrary chunk sequences.
//!
//! Limits: a size over `max` is refused before any byte is read; the caller stops reading once more bytes than
//! announced have come ([`Upload::wants_more`]).

use crate::BlobId;

/// Why an upload stored nothing; the text is the client's error message.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UploadError {
    #[error("upload.id: {0}")]
    BadId(String),
    #[error("upload: blob {id} is {size} bytes, over this node's limit of {max} bytes (--max-blob-bytes)")]
    TooLarge { id: BlobId, size: u64, max: u64 },
    #[error("upload: blob {id} sent {} the {size} it announced ({got}); nothing was stored",
        if *got > *size { "more bytes than" } else { "fewer bytes than" })]
    WrongLength { id: BlobId, size: u64, got: u64 },
    #[error("upload: the bytes hash to {actual}, not to {id} (corrupted in transit?); nothing was stored")]
    Corrupt { id: BlobId, actual: BlobId },
}

/// An upload being received.
#[derive(Debug)]
pub struct Upload {
    id: BlobId,
    size: u64,
    got: u64,
    hasher: blake3::Hasher,
}

impl Upload {
    /// Starts from the first chunk's announced `id` and `size` (its data goes in with [`Upload::push`]).
    pub fn start(id: &str, size: u64, max: u64) -> Result<Upload, UploadError> {
        let id = BlobId::parse(id).map_err(|e| UploadError::BadId(e.to_string()))?;
        if size > max {
            return Err(UploadError::TooLarge { id, size, max });
        }
        Ok(Upload { id, size, got: 0, hasher: blake3::Hasher::new() })
    }

    pub fn id(&self) -> &BlobId {
        &self.id
    }

    pub fn size(&self) -> u64 {
        self.size
    }

    /// Whether another chunk should be read: until more bytes than announced have come (so a sender of too many
    /// is caught) or the stream ends.
    pub fn wants_more(&self) -> bool {
        self.got <= self.size
    }

    /// Counts and hashes a chunk's data.
    pub fn push(&mut self, data: &[u8]) {
        self.got += data.len() as u64;
        if self.got <= self.size {
            self.hasher.update(data);
        }
    }

    /// The id, when the bytes pushed are exactly the announced blob; otherwise why nothing may be stored.
    pub fn finish(self) -> Result<BlobId, UploadError> {
        if self.got != self.size {
            return Err(UploadError::WrongLength { id: self.id, size: self.size, got: self.got });
        }
        let actual = BlobId::from_hash(self.hasher.finalize());
        if actual != self.id {
            return Err(UploadError::Corrupt { id: self.id, actual });
        }
        Ok(self.id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_bytes_verify_and_anything_else_names_the_problem() {
        let data = b"hello blob".to_vec();
        let id = BlobId::of(&data).to_string();
        let mut u = Upload::start(&id, 10, 100).unwrap();
        u.push(&data[..4]);
        assert!(u.wants_more());
        u.push(&data[4..]);
        assert!(u.wants_more(), "exactly the size: one more read finds out whether more comes");
        assert_eq!(u.finish().unwrap(), BlobId::of(&data));

        let mut long = Upload::start(&id, 10, 100).unwrap();
        long.push(&data);
        long.push(b"!");
        assert!(!long.wants_more());
        assert!(long.finish().unwrap_err().to_string().contains("more bytes than the 10"));

        let mut bad = Upload::start(&id, 10, 100).unwrap();
        bad.push(b"hello blub");
        assert!(matches!(bad.finish(), Err(UploadError::Corrupt { .. })));
        assert!(matches!(Upload::start(&id, 101, 100), Err(UploadError::TooLarge { .. })));
        assert!(matches!(Upload::start("nope", 1, 100), Err(UploadError::BadId(_))));
    }
}
