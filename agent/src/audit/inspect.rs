//! TODO
pub fn read_events(_dir: &std::path::Path) -> Result<Vec<super::Event>, String> {
    Ok(vec![])
}
