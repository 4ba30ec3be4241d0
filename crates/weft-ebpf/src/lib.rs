#![no_std]
//! The library target exists so that weft-datapath can name this crate as a build dependency;
//! the programs are in the `weft` binary target (src/main.rs).
