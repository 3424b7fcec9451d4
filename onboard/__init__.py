"""mpq onboard: what runs on the robot. MPPI with an ONNX soft-Q terminal value. Never imports torch."""
