use coderclaw_sdk::skill;

#[skill]
fn run(input: u32) {
    let _ = input;
}

fn main() {}
