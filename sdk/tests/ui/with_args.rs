use coderclaw_sdk::{SkillError, skill};

#[skill(name = "x")]
fn run(input: u32) -> Result<u32, SkillError> {
    Ok(input)
}

fn main() {}
