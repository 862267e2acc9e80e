//! placeholder
pub fn unit(_k: Option<&str>) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
