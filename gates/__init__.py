"""Gate rules, the gate report and the smoke checks: pure logic, no I/O."""
