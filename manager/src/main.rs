//! `tessera-manager`: placeholder until the cluster issue lands.
fn main() {
    eprintln!("tessera-manager: the management service is not implemented yet");
    std::process::exit(2);
}
