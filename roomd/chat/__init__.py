"""`roomd chat`: a terminal chat on the SDK, end-to-end encrypted as E2EE.md says."""
