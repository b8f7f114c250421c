//! The embedded default: with no model configured the service still answers,
//! with a deterministic description composed from the name and tags and a
//! generated placeholder PNG, so `make run` works on a fresh clone.

use base64::Engine;

use super::{CallContext, ChatModel, ChatPrompt, GeneratedImage, ImageModel, ProductFacts, UpstreamError};

/// Side of the square placeholder image, in pixels.
const IMAGE_SIZE: u32 = 128;

/// Generates text and images on this machine, without any model.
#[derive(Debug, Default, Clone, Copy)]
pub struct OfflineGenerator;

/// FNV-1a: a stable hash, so the same product always gets the same text and colours.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

const OPENINGS: [&str; 4] = [
    "Meet {name}, the little upgrade your pet did not know it needed.",
    "{name} brings a wag-worthy twist to everyday pet care.",
    "Say hello to {name}: built for curious noses and busy paws.",
    "{name} is the kind of find that turns a routine into a treat.",
];

const CLOSINGS: [&str; 3] = [
    "Easy to love, easy to keep around, and made to last.",
    "One try and it earns a permanent spot at home.",
    "Thoughtfully made, so you can spend more time on the fun part.",
];

/// A description composed from the product's name and tags.
pub fn describe(facts: &ProductFacts) -> String {
    let hash = fnv1a(&facts.name);
    let name = facts.name.trim();
    let opening = OPENINGS[(hash % OPENINGS.len() as u64) as usize].replace("{name}", name);
    let closing = CLOSINGS[((hash >> 8) % CLOSINGS.len() as u64) as usize];
    let tags: Vec<&str> = facts
        .tags
        .iter()
        .map(|t| t.trim())
        .filter(|t| !t.is_empty())
        .take(5)
        .collect();
    let middle = match tags.as_slice() {
        [] => String::new(),
        [one] => format!(" Think {one}, done right."),
        [init @ .., last] => format!(" Think {} and {last}, all in one.", init.join(", ")),
    };
    format!("{opening}{middle} {closing}")
}

#[async_trait::async_trait]
impl ChatModel for OfflineGenerator {
    async fn complete(&self, _: &ChatPrompt, facts: &ProductFacts, _: &CallContext) -> Result<String, UpstreamError> {
        Ok(describe(facts))
    }
}

#[async_trait::async_trait]
impl ImageModel for OfflineGenerator {
    async fn generate(&self, _: &str, facts: &ProductFacts, _: &CallContext) -> Result<GeneratedImage, UpstreamError> {
        Ok(GeneratedImage::Base64Png(
            base64::engine::general_purpose::STANDARD.encode(placeholder_png(&facts.name)),
        ))
    }
}

/// A diagonal two-colour gradient whose colours come from the name.
pub fn placeholder_png(name: &str) -> Vec<u8> {
    let hash = fnv1a(name);
    let from = [
        (hash >> 16) as u8 | 0x40,
        (hash >> 24) as u8 | 0x40,
        (hash >> 32) as u8 | 0x40,
    ];
    let to = [
        (hash >> 40) as u8 | 0x80,
        (hash >> 48) as u8 | 0x80,
        (hash >> 56) as u8 | 0x80,
    ];
    let size = IMAGE_SIZE as usize;
    let mut raw = Vec::with_capacity(size * (1 + size * 3));
    for y in 0..size {
        raw.push(0); // filter: none
        for x in 0..size {
            let t = (x + y) as u32 * 255 / (2 * (size as u32 - 1));
            for channel in 0..3 {
                let (a, b) = (u32::from(from[channel]), u32::from(to[channel]));
                raw.push(((a * (255 - t) + b * t) / 255) as u8);
            }
        }
    }
    let mut ihdr = Vec::with_capacity(13);
    ihdr.extend_from_slice(&IMAGE_SIZE.to_be_bytes());
    ihdr.extend_from_slice(&IMAGE_SIZE.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]); // 8-bit RGB, deflate, no filter, no interlace
    let mut png = b"\x89PNG\r\n\x1a\n".to_vec();
    chunk(&mut png, b"IHDR", &ihdr);
    chunk(&mut png, b"IDAT", &zlib_stored(&raw));
    chunk(&mut png, b"IEND", &[]);
    png
}

fn chunk(png: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    png.extend_from_slice(&(data.len() as u32).to_be_bytes());
    let start = png.len();
    png.extend_from_slice(kind);
    png.extend_from_slice(data);
    let crc = crc32(&png[start..]);
    png.extend_from_slice(&crc.to_be_bytes());
}

/// A zlib stream of uncompressed ("stored") deflate blocks: valid everywhere, no compressor needed.
fn zlib_stored(data: &[u8]) -> Vec<u8> {
    let mut out = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = data.chunks(65_535).collect();
    for (i, block) in blocks.iter().enumerate() {
        out.push(u8::from(i + 1 == blocks.len()));
        let len = block.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(block);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &byte in data {
        a = (a + u32::from(byte)) % 65_521;
        b = (b + a) % 65_521;
    }
    out.extend_from_slice(&((b << 16) | a).to_be_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(name: &str, tags: &[&str]) -> ProductFacts {
        ProductFacts {
            name: name.to_owned(),
            tags: tags.iter().map(|t| t.to_string()).collect(),
        }
    }

    #[test]
    fn descriptions_are_deterministic_and_use_name_and_tags() {
        let a = describe(&facts("Catnip Carnival", &["toy", "cat", "fun"]));
        assert_eq!(a, describe(&facts("Catnip Carnival", &["toy", "cat", "fun"])));
        assert!(a.contains("Catnip Carnival") && a.contains("toy, cat and fun"), "{a}");
        assert!(!describe(&facts("Bone", &[])).contains("Think"));
    }

    #[test]
    fn the_placeholder_is_a_png_with_valid_checksums() {
        let png = placeholder_png("Catnip Carnival");
        assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(crc32(b"IEND"), 0xAE42_6082);
        assert_eq!(&png[png.len() - 8..], &[b'I', b'E', b'N', b'D', 0xAE, 0x42, 0x60, 0x82]);
        assert_ne!(placeholder_png("a"), placeholder_png("b"));
    }
}
