//! Recipe YAML: parsing, the typed recipe, and sweep expansion (no model is opened).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(doc) = microllm_pipeline::recipe::RecipeDoc::from_text(text) {
        let _ = doc.parse();
        if let Ok(variants) = doc.variants(&[]) {
            for v in variants {
                let _ = v.doc.parse();
            }
        }
    }
});
