# The hcs-scheduler's kube-scheduler: the static binary e2e/cluster builds from k8s.io/kubernetes
# (CGO_ENABLED=0), nothing else. Built by e2e/image/build with the binary as the only build context file.
FROM scratch
COPY kube-scheduler /usr/local/bin/kube-scheduler
ENV PATH=/usr/local/bin
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kube-scheduler"]
