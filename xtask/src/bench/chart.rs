//! A PNG chart per section: one panel per unit the section reports in, one horizontal bar per
//! figure, labelled with its name and value.
//!
//! Drawn with plotters' bitmap backend into a buffer and encoded with the `png` crate (plotters'
//! own encoder would pull in the `image` crate). Text goes through plotters' `ab_glyph` feature,
//! a pure-Rust rasteriser fed DejaVu Sans from Debian's `fonts-dejavu-core` (which the bench's
//! setup installs): no fontconfig or freetype to build.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use anyhow::{Context as _, bail};
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};

use super::{Row, format_value};

/// The font the charts are written in.
pub const FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";
const WIDTH: u32 = 1200;
const LABEL_W: i32 = 440;
const VALUE_W: i32 = 150;
const BAR_H: i32 = 22;
const PANEL_HEAD: i32 = 40;
const MARGIN: i32 = 16;

/// The rows of a section grouped by unit, in the order the units first appear.
pub fn panels<'a>(rows: &[&'a Row]) -> Vec<(&'static str, Vec<&'a Row>)> {
    let mut out: Vec<(&'static str, Vec<&'a Row>)> = Vec::new();
    for r in rows {
        match out.iter_mut().find(|(u, _)| *u == r.unit) {
            Some((_, v)) => v.push(r),
            None => out.push((r.unit, vec![r])),
        }
    }
    out
}

/// A bar's length in pixels for `value` on a panel whose largest value is `max` (negative
/// values, such as a latency below direct's, get no bar).
pub fn bar_len(value: f64, max: f64, span: i32) -> i32 {
    if !(value.is_finite() && max.is_finite()) || value <= 0.0 || max <= 0.0 {
        return 0;
    }
    ((value / max).min(1.0) * f64::from(span)).round() as i32
}

fn font() -> anyhow::Result<()> {
    static DONE: OnceLock<Result<(), String>> = OnceLock::new();
    DONE.get_or_init(|| {
        let bytes = std::fs::read(FONT).map_err(|e| {
            format!(
                "cannot read {FONT} ({e}); `cargo xtask setup --bench` installs fonts-dejavu-core"
            )
        })?;
        let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
        register_font("sans-serif", FontStyle::Normal, bytes)
            .map_err(|_| format!("{FONT} is not a usable font"))
    })
    .clone()
    .map_err(anyhow::Error::msg)
}

/// Writes `<out>/<section>.png` for every section with rows; returns the files written.
pub fn write_all(out: &Path, rows: &[Row]) -> anyhow::Result<Vec<PathBuf>> {
    font()?;
    let mut sections: Vec<&'static str> = Vec::new();
    for r in rows {
        if !sections.contains(&r.section) {
            sections.push(r.section);
        }
    }
    let mut written = Vec::new();
    for s in sections {
        let mine: Vec<&Row> = rows.iter().filter(|r| r.section == s).collect();
        let path = out.join(format!("{s}.png"));
        render(s, &mine, &path).with_context(|| format!("chart {}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn render(section: &str, rows: &[&Row], path: &Path) -> anyhow::Result<()> {
    let groups = panels(rows);
    let height: i32 = MARGIN * 2
        + groups
            .iter()
            .map(|(_, v)| PANEL_HEAD + BAR_H * v.len() as i32 + MARGIN)
            .sum::<i32>();
    let height = u32::try_from(height).context("chart too tall")?;
    let mut buf = vec![0u8; (WIDTH * height * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, height)).into_drawing_area();
        let err = |e| anyhow::anyhow!("drawing: {e:?}");
        root.fill(&WHITE).map_err(err)?;
        let title = ("sans-serif", 17).into_font().color(&BLACK);
        let text = ("sans-serif", 13).into_font().color(&BLACK);
        let bar = RGBColor(70, 110, 170);
        let ours = RGBColor(210, 110, 40);
        let span = WIDTH as i32 - LABEL_W - VALUE_W - MARGIN * 2;
        let mut y = MARGIN;
        for (unit, rs) in &groups {
            root.draw(&Text::new(
                format!("{section}: {unit}"),
                (MARGIN, y + 8),
                title.clone(),
            ))
            .map_err(err)?;
            y += PANEL_HEAD;
            let max = rs.iter().map(|r| r.value).fold(0.0_f64, f64::max);
            for r in rs {
                let x0 = MARGIN + LABEL_W;
                let len = bar_len(r.value, max, span);
                let colour = if r.name.contains("snowtrail") || r.name.contains("agent") {
                    ours
                } else {
                    bar
                };
                root.draw(&Text::new(r.name.clone(), (MARGIN, y + 4), text.clone()))
                    .map_err(err)?;
                if len > 0 {
                    root.draw(&Rectangle::new(
                        [(x0, y + 3), (x0 + len, y + BAR_H - 3)],
                        colour.filled(),
                    ))
                    .map_err(err)?;
                }
                root.draw(&Text::new(
                    format!("{} {}", format_value(r.value), r.unit),
                    (x0 + len + 6, y + 4),
                    text.clone(),
                ))
                .map_err(err)?;
                y += BAR_H;
            }
            y += MARGIN;
        }
        root.present().map_err(err)?;
    }
    write_png(path, WIDTH, height, &buf)
}

fn write_png(path: &Path, width: u32, height: u32, rgb: &[u8]) -> anyhow::Result<()> {
    if rgb.len() != (width * height * 3) as usize {
        bail!("buffer is not {width}x{height} RGB");
    }
    let file = std::fs::File::create(path)?;
    let mut enc = png::Encoder::new(std::io::BufWriter::new(file), width, height);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut w = enc.write_header()?;
    w.write_image_data(rgb)?;
    w.finish()?;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_grouped_by_unit_in_order() {
        let rows = [
            Row::new("s", "a", 1.0, "req/s", ""),
            Row::new("s", "b", 2.0, "x", ""),
            Row::new("s", "c", 3.0, "req/s", ""),
        ];
        let refs: Vec<&Row> = rows.iter().collect();
        let p = panels(&refs);
        assert_eq!(p.len(), 2);
        assert_eq!(p[0].0, "req/s");
        assert_eq!(
            p[0].1.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(),
            ["a", "c"]
        );
        assert_eq!(p[1].0, "x");
    }

    #[test]
    fn bars_scale_to_the_largest_and_skip_negatives() {
        assert_eq!(bar_len(50.0, 100.0, 600), 300);
        assert_eq!(bar_len(100.0, 100.0, 600), 600);
        assert_eq!(bar_len(-5.0, 100.0, 600), 0);
        assert_eq!(bar_len(5.0, 0.0, 600), 0);
        assert_eq!(bar_len(f64::NAN, 1.0, 600), 0);
    }

    #[test]
    fn a_png_is_written() {
        if !Path::new(FONT).exists() {
            // The font comes with the bench's setup; without it there is nothing to draw text with.
            return;
        }
        let dir = std::env::temp_dir().join(format!("xtask-chart-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let rows = vec![
            Row::new("demo", "direct", 10_000.0, "req/s", ""),
            Row::new("demo", "snowtrail", 8_000.0, "req/s", ""),
            Row::new("demo", "ratio", 0.8, "x", ""),
        ];
        let files = write_all(&dir, &rows).unwrap();
        assert_eq!(files, vec![dir.join("demo.png")]);
        let bytes = std::fs::read(&files[0]).unwrap();
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
