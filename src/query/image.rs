//! A heatmap as a PNG: the cells of the click grid painted on a transparent background.
//!
//! Mapping (also in docs/api.md). The grid has 100 columns (`x` = 0..99, each 1 % of the
//! document width) and B bands (`y` = 0 .. B-1, 20 px of page y each; B = the deepest band with
//! a click + 1). The image is W pixels wide and H = min(⌈B · W / 100⌉, [`MAX_PNG_HEIGHT`]) high,
//! so a cell is a square of W/100 pixels while the page fits. Pixel (px, py) shows column
//! ⌊px · 100 / W⌋ and row ⌊py · R / H⌋, where R = min(B, H) rows each sum the bands
//! ⌊r · B / R⌋ .. ⌊(r+1) · B / R⌋ - 1 (one band per row unless the page is taller than the cap).
//! Colour: a row × column count n > 0 is painted with t = ln(1 + n) / ln(1 + max) on the ramp
//! blue → cyan → green → yellow → red, alpha 64 + 191 · t; n = 0 is fully transparent.

use super::Cell;

pub const MIN_PNG_WIDTH: u32 = 100;
pub const MAX_PNG_WIDTH: u32 = 2000;
pub const MAX_PNG_HEIGHT: u32 = 8192;

/// How the grid was laid out in the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PngLayout {
    pub width: u32,
    pub height: u32,
    /// Bands of the page the image covers (B).
    pub bands: u32,
    /// Rows of the image's grid (R): `bands` unless the page was taller than the cap.
    pub rows: u32,
    /// The largest row × column count, painted red.
    pub max: u64,
}

const RAMP: [[f64; 3]; 5] = [
    [0.0, 0.0, 255.0],
    [0.0, 255.0, 255.0],
    [0.0, 255.0, 0.0],
    [255.0, 255.0, 0.0],
    [255.0, 0.0, 0.0],
];

/// The colour of `n` on the ramp scaled to `max` (both > 0).
pub(super) fn colour(n: u64, max: u64) -> [u8; 4] {
    if n == 0 || max == 0 {
        return [0; 4];
    }
    let t = if max == 1 {
        1.0
    } else {
        ((1.0 + n as f64).ln() / (1.0 + max as f64).ln()).clamp(0.0, 1.0)
    };
    let pos = t * (RAMP.len() - 1) as f64;
    let i = (pos.floor() as usize).min(RAMP.len() - 2);
    let f = pos - i as f64;
    let mix = |k: usize| (RAMP[i][k] + (RAMP[i + 1][k] - RAMP[i][k]) * f).round() as u8;
    [mix(0), mix(1), mix(2), (64.0 + 191.0 * t).round() as u8]
}

/// Encodes `cells` as an RGBA PNG `width` pixels wide (`width` within the bounds above).
pub fn render_png(cells: &[Cell], width: u32) -> (Vec<u8>, PngLayout) {
    let width = width.clamp(MIN_PNG_WIDTH, MAX_PNG_WIDTH);
    let bands = cells.iter().map(|c| c.y + 1).max().unwrap_or(1);
    let height = ((u64::from(bands) * u64::from(width)).div_ceil(100))
        .clamp(1, u64::from(MAX_PNG_HEIGHT)) as u32;
    let rows = bands.min(height);
    let mut grid = vec![0u64; rows as usize * 100];
    for c in cells {
        let r = (u64::from(c.y) * u64::from(rows) / u64::from(bands)) as usize;
        let x = c.x.min(99) as usize;
        grid[r * 100 + x] += c.count;
    }
    let max = grid.iter().copied().max().unwrap_or(0);
    let column_of: Vec<usize> = (0..width)
        .map(|px| (px as usize * 100) / width as usize)
        .collect();
    let mut data = vec![0u8; width as usize * height as usize * 4];
    for py in 0..height as usize {
        let r = py * rows as usize / height as usize;
        let line = &grid[r * 100..r * 100 + 100];
        if line.iter().all(|&n| n == 0) {
            continue;
        }
        let out = &mut data[py * width as usize * 4..(py + 1) * width as usize * 4];
        for (px, &cx) in column_of.iter().enumerate() {
            out[px * 4..px * 4 + 4].copy_from_slice(&colour(line[cx], max));
        }
    }
    let mut bytes = Vec::new();
    {
        let mut enc = png::Encoder::new(&mut bytes, width, height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        // Mostly transparent rows and runs of one colour: fast filters compress them well.
        enc.set_compression(png::Compression::Fast);
        // Writing into a Vec cannot fail; the header and data sizes agree by construction.
        let mut w = enc.write_header().expect("PNG header into memory");
        w.write_image_data(&data).expect("PNG data into memory");
    }
    (
        bytes,
        PngLayout {
            width,
            height,
            bands,
            rows,
            max,
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(bytes: &[u8]) -> (u32, u32, Vec<u8>) {
        let dec = png::Decoder::new(std::io::Cursor::new(bytes));
        let mut r = dec.read_info().unwrap();
        let mut buf = vec![0; r.output_buffer_size().unwrap()];
        let info = r.next_frame(&mut buf).unwrap();
        (info.width, info.height, buf)
    }

    #[test]
    fn cells_land_on_their_pixels_and_the_rest_is_transparent() {
        let cells = [
            Cell {
                x: 10,
                y: 0,
                count: 1,
            },
            Cell {
                x: 50,
                y: 4,
                count: 9,
            },
        ];
        let (png, layout) = render_png(&cells, 200);
        assert_eq!(
            (layout.width, layout.height, layout.bands, layout.rows),
            (200, 10, 5, 5)
        );
        let (w, h, px) = decode(&png);
        assert_eq!((w, h), (200, 10));
        let at = |x: usize, y: usize| &px[(y * 200 + x) * 4..(y * 200 + x) * 4 + 4];
        // Column 50 = pixels 100..101, band 4 = rows 8..9: the maximum, red and opaque.
        assert_eq!(at(100, 8), [255, 0, 0, 255]);
        assert_eq!(at(101, 9), [255, 0, 0, 255]);
        // Column 10, band 0: a count of 1 out of 9, cold but visible.
        assert!(at(20, 0)[3] >= 64 && at(20, 0)[2] > 0);
        assert_eq!(at(0, 0), [0, 0, 0, 0]);
        assert_eq!(at(100, 5), [0, 0, 0, 0]);
    }

    #[test]
    fn a_tall_page_is_capped_and_its_bands_summed() {
        let cells = [
            Cell {
                x: 0,
                y: 65535,
                count: 3,
            },
            Cell {
                x: 0,
                y: 65534,
                count: 2,
            },
        ];
        let (_, layout) = render_png(&cells, 2000);
        assert_eq!(layout.height, MAX_PNG_HEIGHT);
        assert_eq!(layout.rows, MAX_PNG_HEIGHT);
        assert_eq!(layout.max, 5, "neighbouring bands share the last row");
    }

    #[test]
    fn no_cells_is_one_transparent_row() {
        let (png, layout) = render_png(&[], 100);
        assert_eq!((layout.height, layout.max), (1, 0));
        assert!(decode(&png).2.iter().all(|&b| b == 0));
    }
}
