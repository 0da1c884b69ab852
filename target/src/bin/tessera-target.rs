fn main() {
    eprintln!("tessera-target: not implemented yet");
    std::process::exit(2);
}
