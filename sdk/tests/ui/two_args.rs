use coderclaw_sdk::{SkillError, skill};

#[skill]
fn run(a: u32, b: u32) -> Result<u32, SkillError> {
    Ok(a + b)
}

fn main() {}
