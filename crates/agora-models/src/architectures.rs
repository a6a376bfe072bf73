//! Which model architectures a node can serve: those llama.cpp (the engine, vendored in
//! `vendor/llama-cpp-sys-2`) knows by their `general.architecture` name, less those that do not
//! generate text (encoders, vision towers, audio decoders). Checked when a GGUF is added and
//! before a node loads one, so that an unknown or hostile file is refused with one clear
//! sentence instead of failing inside the engine.

use std::path::Path;

use crate::gguf::{GgufError, GgufMeta, read_meta_file};

/// Every architecture name llama.cpp's `LLM_ARCH_NAMES` holds (`src/llama-arch.cpp`; a test
/// keeps this list equal to the vendored source's).
pub const LLAMA_CPP: &[&str] = &[
    "clip",
    "llama",
    "llama4",
    "deci",
    "falcon",
    "grok",
    "gpt2",
    "gptj",
    "gptneox",
    "mpt",
    "baichuan",
    "starcoder",
    "refact",
    "bert",
    "modern-bert",
    "nomic-bert",
    "nomic-bert-moe",
    "neo-bert",
    "jina-bert-v2",
    "jina-bert-v3",
    "eurobert",
    "bloom",
    "stablelm",
    "qwen",
    "qwen2",
    "qwen2moe",
    "qwen2vl",
    "qwen3",
    "qwen3moe",
    "qwen3next",
    "qwen3vl",
    "qwen3vlmoe",
    "qwen35",
    "qwen35moe",
    "clef",
    "qwen4exp",
    "phi2",
    "phi3",
    "phimoe",
    "plamo",
    "plamo2",
    "plamo3",
    "codeshell",
    "orion",
    "internlm2",
    "minicpm",
    "minicpm3",
    "gemma",
    "gemma2",
    "gemma3",
    "gemma3n",
    "gemma4",
    "gemma4-assistant",
    "gemma-embedding",
    "starcoder2",
    "mamba",
    "mamba2",
    "maple",
    "jamba",
    "falcon-h1",
    "xverse",
    "command-r",
    "cohere2",
    "cohere2moe",
    "dbrx",
    "olmo",
    "olmo2",
    "olmoe",
    "muse-glimmer",
    "openelm",
    "arctic",
    "deepseek",
    "deepseek2",
    "deepseek2-ocr",
    "deepseek32",
    "deepseek4",
    "chatglm",
    "glm4",
    "glm4moe",
    "glm-dsa",
    "bitnet",
    "t5",
    "t5encoder",
    "jais",
    "jais2",
    "nemotron",
    "nemotron_h",
    "nemotron_h_moe",
    "exaone",
    "exaone4",
    "exaone-moe",
    "rwkv6",
    "rwkv6qwen2",
    "rwkv7",
    "arwkv7",
    "granite",
    "granitemoe",
    "granitehybrid",
    "graniteswitch",
    "granite_swa",
    "chameleon",
    "wavtokenizer-dec",
    "plm",
    "bailingmoe",
    "bailingmoe2",
    "bailingmoe3",
    "dots1",
    "dots3note",
    "arcee",
    "afmoe",
    "laguna",
    "ernie4_5",
    "ernie4_5-moe",
    "hunyuan-moe",
    "hunyuan-dense",
    "hunyuan_vl",
    "hy_v3",
    "hy_v4",
    "smollm3",
    "gpt-oss",
    "lfm2",
    "lfm2moe",
    "dream",
    "smallthinker",
    "llada",
    "llada-moe",
    "seed_oss",
    "grovemoe",
    "apertus",
    "minimax-01",
    "hrm_text",
    "minimax-m2",
    "minimax-m3",
    "cogvlm",
    "rnd1",
    "pangu-embedded",
    "mistral3",
    "eagle3",
    "dflash",
    "mistral4",
    "paddleocr",
    "mimo2",
    "step35",
    "spark2_5",
    "llama-embed",
    "maincoder",
    "kimi-linear",
    "kimi-k3",
    "glm5-next",
    "talkie",
    "mellum",
    "nanbeige",
    "qwen3tts",
    "pockettts",
];

/// Architectures llama.cpp loads but that do not generate text: embedding encoders, the
/// vision and audio parts of multimodal models. A node serves text generation only.
pub const NOT_GENERATIVE: &[&str] = &[
    "clip",
    "bert",
    "modern-bert",
    "nomic-bert",
    "nomic-bert-moe",
    "neo-bert",
    "jina-bert-v2",
    "jina-bert-v3",
    "eurobert",
    "t5encoder",
    "gemma-embedding",
    "llama-embed",
    "wavtokenizer-dec",
];

/// Why a GGUF cannot be served.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// The metadata does not parse (hostile or damaged file).
    #[error("{path} is not a usable GGUF file: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: GgufError,
    },
    /// An architecture the engine does not know.
    #[error(
        "{path} is a model of architecture `{arch}`, which llama.cpp (Agora's engine) does not know; it runs {} architectures, such as llama, qwen3, gemma3, mistral3, phi3",
        LLAMA_CPP.len()
    )]
    Unknown { path: String, arch: String },
    /// An architecture that does not generate text.
    #[error(
        "{path} is a `{arch}` model, which encodes its input but does not generate text: a node serves text-generating models only"
    )]
    NotGenerative { path: String, arch: String },
}

/// Whether `arch` is an architecture a node can serve; `path` names the file in the error.
pub fn check(path: &str, arch: &str) -> Result<(), ArchError> {
    if !LLAMA_CPP.contains(&arch) {
        return Err(ArchError::Unknown {
            path: path.into(),
            // The name comes from the file: shown escaped, bounded.
            arch: arch
                .chars()
                .take(64)
                .flat_map(char::escape_default)
                .collect(),
        });
    }
    if NOT_GENERATIVE.contains(&arch) {
        return Err(ArchError::NotGenerative {
            path: path.into(),
            arch: arch.into(),
        });
    }
    Ok(())
}

/// Reads `path`'s metadata (bounded, outside llama.cpp) and checks its architecture.
pub fn check_file(path: &Path) -> Result<GgufMeta, ArchError> {
    let shown = path.display().to_string();
    let meta = read_meta_file(path).map_err(|source| ArchError::Unreadable {
        path: shown.clone(),
        source,
    })?;
    check(&shown, &meta.architecture)?;
    Ok(meta)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// The list is llama.cpp's own, as vendored: a rebase that adds or renames an architecture
    /// fails here until the list follows.
    #[test]
    fn the_list_is_the_vendored_llama_cpp_list() {
        let src = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../vendor/llama-cpp-sys-2/llama.cpp/src/llama-arch.cpp"
        ))
        .unwrap();
        let start = src.find("LLM_ARCH_NAMES = {").unwrap();
        let end = start + src[start..].find("};").unwrap();
        let names: Vec<&str> = src[start..end]
            .lines()
            .filter_map(|l| {
                let l = l.trim();
                l.starts_with("{ LLM_ARCH_")
                    .then(|| l.split('"').nth(1))
                    .flatten()
            })
            .filter(|n| *n != "(unknown)")
            .collect();
        assert_eq!(names, LLAMA_CPP);
        for a in NOT_GENERATIVE {
            assert!(LLAMA_CPP.contains(a), "{a}");
        }
    }

    #[test]
    fn unknown_and_encoder_architectures_are_refused_in_one_sentence() {
        assert!(check("m.gguf", "llama").is_ok());
        assert!(check("m.gguf", "gemma3").is_ok());
        let e = check("m.gguf", "gpt5\u{1b}[2J").unwrap_err().to_string();
        assert!(
            e.starts_with("m.gguf is a model of architecture `gpt5\\u{1b}[2J`"),
            "{e}"
        );
        assert!(!e.contains('\u{1b}'));
        let e = check("m.gguf", "bert").unwrap_err().to_string();
        assert!(e.contains("does not generate text"), "{e}");
    }
}
