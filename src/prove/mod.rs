pub mod fuzz;
