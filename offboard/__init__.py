"""mpq offboard: what runs on the workstation (training, export, deploy, demo, benchmarks)."""
