//! `manifest_parse`: the network-facing parsers of `kad-plugin-storage`.
//!
//! Input: one byte choosing the parser (even: `Manifest::from_bytes`, odd: `parse_index_blob`),
//! then the bytes to parse.
//!
//! Checks: never panics; a parsed manifest is valid (`validate`), its serialisation
//! (`to_bytes`) parses back to an equal manifest and is a fixed point, its chunk lengths add
//! up; a parsed index blob holds `len / 20` keys that `index_blobs` packs back into the same
//! bytes.

#![no_main]

use kad_plugin_storage::{
    MAX_CHUNK_SIZE, MAX_INDEX_BLOBS, MAX_MANIFEST_LEN, Manifest, index_blobs, parse_index_blob,
};
use libfuzzer_sys::fuzz_target;

fn check_manifest(data: &[u8]) {
    let Ok(m) = Manifest::from_bytes(data) else {
        return;
    };
    m.validate()
        .expect("from_bytes returns only valid manifests");
    assert!((1..=MAX_CHUNK_SIZE).contains(&m.chunk_size));
    assert!(m.index.len() <= MAX_INDEX_BLOBS);
    assert_eq!(m.chunks, m.size.div_ceil(u64::from(m.chunk_size)));
    let bytes = m.to_bytes();
    assert!(bytes.len() <= MAX_MANIFEST_LEN);
    let back = Manifest::from_bytes(&bytes).expect("a serialised manifest parses");
    assert_eq!(back, m, "round trip");
    assert_eq!(back.to_bytes(), bytes, "to_bytes is a fixed point");
    // Chunk lengths: full chunks, then a last one of 1..=chunk_size bytes; none past the end.
    let cs = u64::from(m.chunk_size);
    if m.chunks > 0 {
        let last = m.chunks - 1;
        let last_len = m.plain_len(last).expect("the last chunk exists") as u64;
        assert!((1..=cs).contains(&last_len));
        assert_eq!(last * cs + last_len, m.size);
        if last > 0 {
            assert_eq!(m.plain_len(0).expect("chunk 0 exists") as u64, cs);
            assert_eq!(m.plain_len(last - 1).expect("exists") as u64, cs);
        }
        let stored = m.stored_len(last).expect("the last chunk exists");
        assert!(stored >= last_len as usize);
        assert_eq!(stored == last_len as usize, m.encryption.is_none());
    }
    assert!(m.plain_len(m.chunks).is_err());
    assert!(m.stored_len(m.chunks).is_err());
    // An encrypted manifest never names the file.
    assert!(m.encryption.is_none() || m.name.is_none());
}

fn check_index_blob(data: &[u8]) {
    match parse_index_blob(data) {
        Ok(keys) => {
            assert!(!data.is_empty() && data.len() % 20 == 0);
            assert_eq!(keys.len(), data.len() / 20);
            let blobs = index_blobs(&keys, data.len()).expect("one blob holds them");
            assert_eq!(blobs, vec![data.to_vec()]);
        }
        Err(_) => assert!(data.is_empty() || data.len() % 20 != 0),
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, data)) = input.split_first() else {
        return;
    };
    if sel & 1 == 0 {
        check_manifest(data);
    } else {
        check_index_blob(data);
    }
});
