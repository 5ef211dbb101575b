"""Fine-tuning methods. Each module registers one method with `harness.method.register`;
the registry discovers every module here, so a new method is a new file (plus its config in
`harness/conf/method/`)."""
