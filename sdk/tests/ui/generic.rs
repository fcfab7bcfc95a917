use coderclaw_sdk::{SkillError, skill};

#[skill]
fn run<T: serde::de::DeserializeOwned>(input: T) -> Result<u32, SkillError> {
    let _ = input;
    Ok(0)
}

fn main() {}
