fn main() {
    let obj = include_bytes!(concat!(env!("OUT_DIR"), "/sipfilter-xdp"));
    println!("{}", obj.len());
}
