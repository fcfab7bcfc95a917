use coderclaw_sdk::{SkillError, skill};

#[derive(serde::Deserialize)]
struct Input {
    n: u32,
}

#[skill]
fn run(input: Input) -> Result<u32, SkillError> {
    Ok(input.n + 1)
}

fn main() {}
