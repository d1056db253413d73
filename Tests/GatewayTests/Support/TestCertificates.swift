/// Test-only TLS material, made once with the openssl command line (valid until 2126):
///
///     openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 36500 \
///       -subj "/CN=moongate test CA" -keyout ca.key -out ca.pem
///     openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=localhost" \
///       -keyout server.key -out server.csr
///     openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -days 36500 -out server.pem \
///       -extfile <(printf "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
///
/// `otherCA` is an unrelated self-signed CA, for "the wrong CA is refused".
enum TestCertificates {
    static let ca = """
-----BEGIN CERTIFICATE-----
MIIBjTCCATOgAwIBAgIULJB6X5M4J1FKejzgXQhK///kieQwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQbW9vbmdhdGUgdGVzdCBDQTAgFw0yNjExMjMwOTAzMjNaGA8y
MTI2MTAzMDA5MDMyM1owGzEZMBcGA1UEAwwQbW9vbmdhdGUgdGVzdCBDQTBZMBMG
ByqGSM49AgEGCCqGSM49AwEHA0IABLbvJcV3g8orTwbBKx7bWfS1nibrOJR4syx+
8ulKWd+mnbhRwJ9Yzq/8EcTQ5qWAjSdrYsX/aYDWL5e6kXk5lGGjUzBRMB0GA1Ud
DgQWBBTiZGvokKFjtxGNGeFBqJwSvFhdQTAfBgNVHSMEGDAWgBTiZGvokKFjtxGN
GeFBqJwSvFhdQTAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0gAMEUCIQCE
pNXtuYScn+j0f19buBF1zIk9w1H5Qad1Fs3DHxvI3wIgPoAxfrARWZzAPHZcqOi3
KSEmMXSJM/qSE3MdHlNKy3Y=
-----END CERTIFICATE-----
"""
    static let server = """
-----BEGIN CERTIFICATE-----
MIIBsjCCAVegAwIBAgIUTnUnBfPwZBk55EHQCPdoJ8rJQTwwCgYIKoZIzj0EAwIw
GzEZMBcGA1UEAwwQbW9vbmdhdGUgdGVzdCBDQTAgFw0yNjExMjMwOTAzMjNaGA8y
MTI2MTAzMDA5MDMyM1owFDESMBAGA1UEAwwJbG9jYWxob3N0MFkwEwYHKoZIzj0C
AQYIKoZIzj0DAQcDQgAEz6jUJfeDRErXIs/hwuGJ7VBg1VDH1lZqjDv5+3yuSLh5
w09evGc+1YLd2HJvfPTlMwP9P6YhyvYV1/vku8omtaN+MHwwGgYDVR0RBBMwEYIJ
bG9jYWxob3N0hwR/AAABMAkGA1UdEwQCMAAwEwYDVR0lBAwwCgYIKwYBBQUHAwEw
HQYDVR0OBBYEFFzOWl5wmKiVJ3UktQ+WSTzW3jVoMB8GA1UdIwQYMBaAFOJka+iQ
oWO3EY0Z4UGonBK8WF1BMAoGCCqGSM49BAMCA0kAMEYCIQCbKibmGu5it2je17/T
cHEVpwOtDagck2w3I6Bam8VHMwIhAKPssASw2bNzAlCwgmETWUHRIB9skWs7Nd8j
aGsB1G8/
-----END CERTIFICATE-----
"""
    static let serverKey = """
-----BEGIN PRIVATE KEY-----
MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQghUl6Yge4dDvLuF4p
HT9KV8MAMlrT+H19Fb55CGOmjoyhRANCAATPqNQl94NEStciz+HC4YntUGDVUMfW
VmqMO/n7fK5IuHnDT168Zz7Vgt3Ycm989OUzA/0/piHK9hXX++S7yia1
-----END PRIVATE KEY-----
"""
    static let otherCA = """
-----BEGIN CERTIFICATE-----
MIIBiDCCAS2gAwIBAgIUML5BcYhntB0vjHkp5S4/e6XtwVMwCgYIKoZIzj0EAwIw
GDEWMBQGA1UEAwwNc29tZSBvdGhlciBDQTAgFw0yNjExMjMwOTA0MTlaGA8yMTI2
MTAzMDA5MDQxOVowGDEWMBQGA1UEAwwNc29tZSBvdGhlciBDQTBZMBMGByqGSM49
AgEGCCqGSM49AwEHA0IABKiEvbO6MhPwTe4C5ehg4iG06cIpt9jJSVyOBDK7SDHD
WHwn2TlFH7W43WvqdiIvva3ejrWfsuajFxVd2wbCwdKjUzBRMB0GA1UdDgQWBBRt
DDekVBqJgrEtXZPuMsxA/YQvUzAfBgNVHSMEGDAWgBRtDDekVBqJgrEtXZPuMsxA
/YQvUzAPBgNVHRMBAf8EBTADAQH/MAoGCCqGSM49BAMCA0kAMEYCIQCgJSDcDcMS
RJORYgSiQtWXWj4x+MEg1IXFr8pbd1G2wgIhAKclN1Am20C8OcYSOpR4mZw6m7/v
h+Q43SdTbcI87pyg
-----END CERTIFICATE-----
"""
}
