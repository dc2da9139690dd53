//! The report's charts: plotters drawing into SVG strings, inlined in the HTML page.

use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

/// Width and height of every chart, in CSS pixels.
pub const SIZE: (u32, u32) = (760, 330);

/// One colour per series, in order (colour-blind-safe Okabe-Ito, then greys).
const PALETTE: [RGBColor; 9] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
    RGBColor(100, 100, 100),
    RGBColor(170, 170, 170),
];

type Drawn = Result<(), Box<dyn std::error::Error>>;

/// Faint grid lines.
const GRID: RGBColor = RGBColor(236, 236, 236);

/// Ticks for a count axis `0..max`: whole numbers only when the range is small.
fn ticks(max: f64) -> usize {
    if max <= 10.0 { max as usize + 1 } else { 11 }
}

/// A round upper bound for an axis, at least `v`: 1, 1.2, 1.5, 2, 2.5, 3, 4, 5, 6 or 8 times a
/// power of ten.
pub fn nice_max(v: f64) -> f64 {
    if !(v.is_finite() && v > 0.0) {
        return 1.0;
    }
    let mag = 10f64.powf(v.log10().floor());
    [1.0, 1.2, 1.5, 2.0, 2.5, 3.0, 4.0, 5.0, 6.0, 8.0, 10.0]
        .iter()
        .map(|m| m * mag)
        .find(|&m| m >= v)
        .unwrap_or(10.0 * mag)
}

fn svg(
    draw: impl FnOnce(DrawingArea<SVGBackend<'_>, plotters::coord::Shift>) -> Drawn,
) -> Result<String, String> {
    let mut out = String::new();
    {
        let root = SVGBackend::with_string(&mut out, SIZE).into_drawing_area();
        draw(root).map_err(|e| e.to_string())?;
    }
    Ok(out)
}

/// Category axes are `0..n` in data units, category i spanning `i..i + 1`. Asked for `2n + 1`
/// labels, plotters puts one every 0.5 (its steps are 1, 2 or 5 times a power of ten), so the
/// formatter names the category at each centre and leaves the boundaries blank; with many
/// categories only every `every`-th is named.
fn category_label(names: &[String], every: usize) -> impl Fn(&f64) -> String + '_ {
    move |x| {
        let i = x.floor();
        if (x - i - 0.5).abs() > 1e-6 || i < 0.0 {
            return String::new();
        }
        let i = i as usize;
        if !i.is_multiple_of(every.max(1)) {
            return String::new();
        }
        names.get(i).cloned().unwrap_or_default()
    }
}

/// Vertical bars, one per category, stacked by series (`series[k].1[i]` is series k's value in
/// category i), with a legend when there is more than one series.
pub fn stacked_columns(
    caption: &str,
    categories: &[String],
    series: &[(String, Vec<f64>)],
    y_desc: &str,
) -> Result<String, String> {
    svg(|root| {
        root.fill(&WHITE)?;
        let n = categories.len().max(1);
        let totals = (0..categories.len()).map(|i| series.iter().map(|(_, v)| v[i]).sum::<f64>());
        let y_max = nice_max(totals.fold(0.0, f64::max) * 1.15);
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d(0f64..n as f64, 0f64..y_max)?;
        let names = category_label(categories, n.div_ceil(10));
        let y_fmt = |y: &f64| format!("{y:.0}");
        chart
            .configure_mesh()
            .disable_x_mesh()
            .light_line_style(GRID)
            .x_labels(2 * n + 1)
            .x_label_formatter(&names)
            .y_labels(ticks(y_max))
            .y_label_formatter(&y_fmt)
            .y_desc(y_desc)
            .label_style(("sans-serif", 15))
            .draw()?;
        // Columns at most 60 px wide however few the categories, a gap of a fifth between many.
        let segment = chart.plotting_area().dim_in_pixel().0 as f64 / n as f64;
        let pad = ((1.0 - 60.0 / segment) / 2.0).max(0.1);
        for (k, (name, values)) in series.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v > 0.0)
                        .map(|(i, v)| {
                            let base: f64 = series[..k].iter().map(|(_, s)| s[i]).sum();
                            let x = i as f64;
                            Rectangle::new([(x + pad, base), (x + 1.0 - pad, base + v)], color.filled())
                        }),
                )?
                .label(name.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], color.filled()));
        }
        if series.len() > 1 {
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperRight)
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK.mix(0.3))
                .label_font(("sans-serif", 15))
                .draw()?;
        }
        root.present()?;
        Ok(())
    })
}

/// Horizontal bars, the first category on top, each labelled with `fmt(value)`.
pub fn bars(
    caption: &str,
    categories: &[String],
    values: &[f64],
    x_max: Option<f64>,
    x_desc: &str,
    fmt: &dyn Fn(f64) -> String,
) -> Result<String, String> {
    svg(|root| {
        root.fill(&WHITE)?;
        let n = categories.len().max(1);
        // The y axis counts from the bottom: reverse so the first category is on top.
        let reversed: Vec<String> = categories.iter().rev().cloned().collect();
        let longest = categories.iter().map(|c| c.chars().count()).max().unwrap_or(4);
        let counts = x_max.is_none();
        let x_max = x_max.unwrap_or_else(|| nice_max(values.iter().copied().fold(0.0, f64::max) * 1.15));
        let mut chart = ChartBuilder::on(&root)
            .caption(caption, ("sans-serif", 22))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size((longest as u32 * 8 + 16).clamp(40, 280))
            .build_cartesian_2d(0f64..x_max, 0f64..n as f64)?;
        let names = category_label(&reversed, 1);
        let x_fmt = |x: &f64| fmt(*x);
        chart
            .configure_mesh()
            .disable_y_mesh()
            .light_line_style(GRID)
            .x_labels(if counts { ticks(x_max) } else { 11 })
            .y_labels(2 * n + 1)
            .y_label_formatter(&names)
            .x_label_formatter(&x_fmt)
            .x_desc(x_desc)
            .label_style(("sans-serif", 15))
            .draw()?;
        let row = |i: usize| (n - 1 - i) as f64;
        // Bars at most 36 px thick however few the categories, a gap of 30% between many.
        let segment = chart.plotting_area().dim_in_pixel().1 as f64 / n as f64;
        let pad = ((1.0 - 36.0 / segment) / 2.0).max(0.15);
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            Rectangle::new(
                [(0.0, row(i) + pad), (*v, row(i) + 1.0 - pad)],
                PALETTE[0].filled(),
            )
        }))?;
        chart.draw_series(values.iter().enumerate().map(|(i, v)| {
            // Beside the bar, or inside its end in white when the bar nearly fills the chart.
            let inside = *v > x_max * 0.85;
            let style = ("sans-serif", 15).into_font();
            let (x, style) = if inside {
                (
                    *v - x_max * 0.01,
                    style.color(&WHITE).pos(Pos::new(HPos::Right, VPos::Center)),
                )
            } else {
                (
                    *v + x_max * 0.01,
                    style.color(&BLACK).pos(Pos::new(HPos::Left, VPos::Center)),
                )
            };
            Text::new(fmt(*v), (x, row(i) + 0.5), style)
        }))?;
        root.present()?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nice_max_rounds_up_to_a_round_number() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(3.0), 3.0);
        assert_eq!(nice_max(3.5), 4.0);
        assert_eq!(nice_max(11.5), 12.0);
        assert_eq!(nice_max(681.0), 800.0);
    }

    #[test]
    fn charts_are_svg_with_a_bar_per_value() {
        let cats = vec!["a".to_string(), "b<&>".to_string()];
        let s = bars("t", &cats, &[3.0, 1.0], None, "n", &|v| format!("{v:.0}")).unwrap();
        assert!(s.starts_with("<svg"), "{s}");
        assert!(s.contains("b&lt;&amp;&gt;"), "names are escaped");
        let s = stacked_columns(
            "t",
            &cats,
            &[("x".into(), vec![1.0, 0.0]), ("y".into(), vec![2.0, 4.0])],
            "n",
        )
        .unwrap();
        assert!(s.ends_with("</svg>\n") || s.ends_with("</svg>"), "{s}");
        assert!(
            s.contains(">\nx\n<") && s.contains(">\ny\n<"),
            "legend names both series: {s}"
        );
    }
}
