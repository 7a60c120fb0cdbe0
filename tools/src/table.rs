//! Plain-text tables, aligned, for terminals.

/// A table: a header row and data rows, printed with columns aligned.
#[derive(Debug, Default)]
pub struct Table {
    rows: Vec<Vec<String>>,
    right: Vec<bool>,
}

impl Table {
    /// A table with these column titles; titles starting with '>' are right-aligned (numbers).
    pub fn new(titles: &[&str]) -> Table {
        let right = titles.iter().map(|t| t.starts_with('>')).collect();
        let head = titles.iter().map(|t| t.trim_start_matches('>').to_owned()).collect();
        Table { rows: vec![head], right }
    }

    /// Adds a row.
    pub fn row(&mut self, cells: Vec<String>) {
        self.rows.push(cells);
    }

    /// Whether only the header is there.
    pub fn is_empty(&self) -> bool {
        self.rows.len() <= 1
    }

    /// Renders with two spaces between columns.
    pub fn render(&self) -> String {
        let cols = self.rows.iter().map(Vec::len).max().unwrap_or(0);
        let width: Vec<usize> = (0..cols)
            .map(|c| self.rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
            .collect();
        let mut out = String::new();
        for r in &self.rows {
            let mut line = String::new();
            for (c, cell) in r.iter().enumerate() {
                let pad = width[c].saturating_sub(cell.chars().count());
                if c > 0 {
                    line.push_str("  ");
                }
                if self.right.get(c).copied().unwrap_or(false) {
                    line.push_str(&" ".repeat(pad));
                    line.push_str(cell);
                } else {
                    line.push_str(cell);
                    if c + 1 < r.len() {
                        line.push_str(&" ".repeat(pad));
                    }
                }
            }
            out.push_str(line.trim_end());
            out.push('\n');
        }
        out
    }
}

/// A duration in nanoseconds, human-scaled.
pub fn ns(v: u64) -> String {
    match v {
        0..=9_999 => format!("{v} ns"),
        10_000..=9_999_999 => format!("{:.1} µs", v as f64 / 1e3),
        _ => format!("{:.1} ms", v as f64 / 1e6),
    }
}

/// A count per second, human-scaled.
pub fn rate(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k/s", v / 1e3)
    } else {
        format!("{v:.0}/s")
    }
}

/// Bytes per second, human-scaled.
pub fn bytes_rate(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} GB/s", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.1} MB/s", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} kB/s", v / 1e3)
    } else {
        format!("{v:.0} B/s")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligns() {
        let mut t = Table::new(&["name", ">n"]);
        t.row(vec!["a".into(), "1".into()]);
        t.row(vec!["long".into(), "100".into()]);
        assert_eq!(t.render(), "name    n\na       1\nlong  100\n");
        assert_eq!(ns(1500), "1500 ns");
        assert_eq!(ns(15_000), "15.0 µs");
    }
}
