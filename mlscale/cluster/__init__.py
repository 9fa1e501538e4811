"""The cluster: its one definition and the files made from it (definition, launcher, kuberay, mlflow_server,
render), and connecting a process to it or to the embedded local Ray (connect)."""
