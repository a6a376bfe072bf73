//! Croissant import (an untrusted JSON-LD file): parsing any bytes never panics, every
//! accepted file's contentUrls are plain relative paths, and the ingest's metadata is derived
//! without panicking whatever the command line overrides.
#![no_main]
use agora_datastore::croissant::{self, Overrides};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(c) = croissant::parse(data) else {
        return;
    };
    for f in &c.files {
        assert!(f.path.is_relative());
        assert!(
            f.path
                .components()
                .all(|p| matches!(p, std::path::Component::Normal(_)))
        );
        assert_eq!(
            croissant::relative_path(&f.content_url).ok().as_ref(),
            Some(&f.path)
        );
    }
    let _ = c.meta(&Overrides::default());
    let _ = c.meta(&Overrides {
        name: Some("n".into()),
        license: Some("MIT".into()),
        source: Some("s".into()),
        ..Overrides::default()
    });
});
