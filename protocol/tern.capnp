@0xb00b19b71dc276db;
# placeholder: to be written
struct Placeholder { x @0 :UInt32; }
