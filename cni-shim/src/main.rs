//! The `weft` CNI plugin. The CNI issue fills it; until then it answers every call with the CNI
//! spec's internal-error result instead of pretending to succeed.
#![forbid(unsafe_code)]

fn main() {
    println!(
        "{{\"cniVersion\":\"1.1.0\",\"code\":999,\"msg\":\"the weft CNI plugin is not implemented yet\"}}"
    );
    std::process::exit(1);
}
