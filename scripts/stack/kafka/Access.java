// Applies an access matrix (acls.txt, rendered from reco_common.kafka_access) to the dev broker
// in one JVM, through Kafka's own Admin API: one SCRAM-SHA-512 user per principal (password
// `<principal>-dev-secret`, the development placeholder) and one ALLOW ACL per operation of
// each line. The grants of a previously applied file are deleted first, so a grant taken out
// of the matrix is taken off the broker. Run by scripts/stack.sh as a single-file program:
//   java -cp '<kafka>/libs/*' Access.java <bootstrap> <acls.txt> [<previously applied acls.txt>]
// (the kafka-configs/kafka-acls tools would take one JVM per user and per line: minutes.)

import java.nio.file.Files;
import java.nio.file.Path;
import java.util.ArrayList;
import java.util.List;
import java.util.Locale;
import java.util.Map;
import java.util.TreeSet;
import org.apache.kafka.clients.admin.Admin;
import org.apache.kafka.clients.admin.ScramCredentialInfo;
import org.apache.kafka.clients.admin.ScramMechanism;
import org.apache.kafka.clients.admin.UserScramCredentialAlteration;
import org.apache.kafka.clients.admin.UserScramCredentialUpsertion;
import org.apache.kafka.common.acl.AccessControlEntry;
import org.apache.kafka.common.acl.AclBinding;
import org.apache.kafka.common.acl.AclBindingFilter;
import org.apache.kafka.common.acl.AclOperation;
import org.apache.kafka.common.acl.AclPermissionType;
import org.apache.kafka.common.resource.PatternType;
import org.apache.kafka.common.resource.ResourcePattern;
import org.apache.kafka.common.resource.ResourceType;

public class Access {
  private static final String PASSWORD_SUFFIX = "-dev-secret";

  public static void main(String[] args) throws Exception {
    List<String[]> wanted = lines(Path.of(args[1]));
    List<String[]> previous = args.length > 2 ? lines(Path.of(args[2])) : List.of();
    try (Admin admin = Admin.create(Map.of("bootstrap.servers", args[0]))) {
      admin.alterUserScramCredentials(users(wanted)).all().get();
      List<AclBindingFilter> stale = new ArrayList<>();
      for (AclBinding binding : bindings(previous)) stale.add(binding.toFilter());
      if (!stale.isEmpty()) admin.deleteAcls(stale).all().get();
      List<AclBinding> grants = bindings(wanted);
      admin.createAcls(grants).all().get();
      System.out.println("kafka access: " + users(wanted).size() + " users, " + grants.size() + " ACLs");
    }
  }

  // `principal operations resource pattern name`, `#` comments and blank lines skipped.
  private static List<String[]> lines(Path file) throws Exception {
    List<String[]> found = new ArrayList<>();
    for (String line : Files.readAllLines(file)) {
      String text = line.strip();
      if (text.isEmpty() || text.startsWith("#")) continue;
      String[] fields = text.split("\\s+");
      if (fields.length != 5) throw new IllegalArgumentException(file + ": not 5 fields: " + line);
      found.add(fields);
    }
    return found;
  }

  private static List<UserScramCredentialAlteration> users(List<String[]> lines) {
    TreeSet<String> names = new TreeSet<>();
    for (String[] fields : lines) names.add(fields[0]);
    ScramCredentialInfo info = new ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096);
    List<UserScramCredentialAlteration> users = new ArrayList<>();
    for (String name : names) users.add(new UserScramCredentialUpsertion(name, info, name + PASSWORD_SUFFIX));
    return users;
  }

  private static List<AclBinding> bindings(List<String[]> lines) {
    List<AclBinding> bindings = new ArrayList<>();
    for (String[] f : lines) {
      ResourcePattern resource = new ResourcePattern(
          ResourceType.fromString(f[2]), f[4], PatternType.fromString(f[3].toUpperCase(Locale.ROOT)));
      for (String operation : f[1].split(",")) {
        AclOperation op = AclOperation.fromString(operation);
        if (op == AclOperation.UNKNOWN) throw new IllegalArgumentException("unknown operation " + operation);
        AccessControlEntry entry = new AccessControlEntry("User:" + f[0], "*", op, AclPermissionType.ALLOW);
        bindings.add(new AclBinding(resource, entry));
      }
    }
    return bindings;
  }
}
