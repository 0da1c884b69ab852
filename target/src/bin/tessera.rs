fn main() {
    eprintln!("tessera: not implemented yet");
    std::process::exit(2);
}
