//! placeholder
pub fn kernels(_h: bool, _k: &[String]) -> anyhow::Result<()> {
    anyhow::bail!("todo")
}
