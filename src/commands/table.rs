//! Tables for people: columns as wide as their widest cell (a real rkt
//! netns path is 63 characters), two spaces apart, the last one unpadded.

/// Prints `headers` and `rows` as aligned columns on stdout.
pub fn print(headers: &[&str], rows: &[Vec<String>]) {
    print!("{}", render(headers, rows));
}

/// The table as text, one line per row, each ending in a newline.
pub fn render(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let header: Vec<String> = headers.iter().map(|h| (*h).to_owned()).collect();
    for row in std::iter::once(&header).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn columns_fit_their_widest_cell() {
        let path = "/var/lib/rkt/pods/run/0ddba11a-a507-4694-aabf-000000000001/netns";
        let text = super::render(
            &["POD", "NETNS", "APPS"],
            &[
                vec!["p1".into(), path.into(), "web".into()],
                vec!["pod-two".into(), "-".into(), "a,b".into()],
            ],
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            format!("POD      NETNS{}  APPS", " ".repeat(path.len() - 5))
        );
        assert_eq!(lines[1], format!("p1       {path}  web"));
        assert_eq!(
            lines[2],
            format!("pod-two  -{}  a,b", " ".repeat(path.len() - 1))
        );
    }
}
